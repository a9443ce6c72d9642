"""Frozen-feature baselines: embed every image once with a pretrained (or trained) network, cache the
embeddings, and fit classical classifiers on them.

- :mod:`~herbarium2field.features.store`: the resumable embedding cache (``h2f embed``), :func:`load_features`.
- :mod:`~herbarium2field.features.extract`: :func:`embed_dataset` with a frozen backbone or a trained run.
- :mod:`~herbarium2field.features.classic`: classic run directories (``h2f fit-classic``).

The classifiers themselves (scikit-learn estimators) and the domain alignment are models:
:mod:`herbarium2field.models.classifiers`, :mod:`herbarium2field.models.align`.
"""
