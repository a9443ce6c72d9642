"""Frozen-feature baselines: embed every image once with a pretrained (or trained) network, cache the
embeddings, and fit classical classifiers on them.

- :mod:`~herbarium2field.features.store`: the resumable embedding cache (``h2f embed``), :func:`load_features`.
- :mod:`~herbarium2field.features.extract`: building the extractor and :func:`embed_dataset`.
- :mod:`~herbarium2field.features.align`: per-domain standardisation and CORAL.
- :mod:`~herbarium2field.features.classifiers`: logreg, svm, knn, ncm scorers.
- :mod:`~herbarium2field.features.classic`: classic run directories (``h2f fit-classic``),
  :func:`load_classic`, :func:`classic_split_scores`.
"""

from herbarium2field.features.classic import (
    ABSENT,
    ClassicModel,
    classic_split_scores,
    fit_classic,
    load_classic,
    save_classic,
)
from herbarium2field.features.extract import ExtractorSpec, embed_dataset
from herbarium2field.features.store import Features, load_features

__all__ = [
    "ABSENT",
    "ClassicModel",
    "ExtractorSpec",
    "Features",
    "classic_split_scores",
    "embed_dataset",
    "fit_classic",
    "load_classic",
    "load_features",
    "save_classic",
]
