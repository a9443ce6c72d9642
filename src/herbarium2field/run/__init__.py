"""The run directory, the contract between commands: where every artefact of a run lives (:mod:`.paths`),
what the model is (:mod:`.card`), whether a derived file still matches it (:mod:`.fingerprint`), the
artefacts inference needs (:mod:`.artefacts`), how they are written at the end of training
(:mod:`.finalize`) and the one way to load a run's model (:mod:`.load`)."""
