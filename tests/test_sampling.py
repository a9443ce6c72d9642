"""The balanced sampler and the validation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from herbarium2field.data.samplers import BalancedSampler, sample_weights
from herbarium2field.data.split import validation_mask

# class 0: 90 sheets + 10 photos, class 1: 10 sheets, class 2: 40 sheets + 40 photos
LABELS = np.array([0] * 100 + [1] * 10 + [2] * 80)
DOMAINS = np.array([0] * 90 + [1] * 10 + [0] * 10 + [0] * 40 + [1] * 40)


def class_share(w):
    return np.array([w[LABELS == c].sum() for c in range(3)])


def test_natural_frequency_at_strength_zero():
    w = sample_weights(LABELS, DOMAINS, class_balance=0.0, field_share=None)
    assert np.allclose(w, 1 / len(LABELS))


def test_uniform_classes_at_strength_one():
    w = sample_weights(LABELS, DOMAINS, class_balance=1.0, field_share=None)
    assert np.allclose(class_share(w), 1 / 3)


def test_intermediate_strength_is_between():
    w = sample_weights(LABELS, DOMAINS, class_balance=0.5, field_share=None)
    share = class_share(w)
    expected = np.sqrt([100, 10, 80]) / np.sqrt([100, 10, 80]).sum()
    assert np.allclose(share, expected)


def test_field_share_within_classes_that_have_both_domains():
    w = sample_weights(LABELS, DOMAINS, class_balance=1.0, field_share=0.5)
    for c in (0, 2):
        field = w[(LABELS == c) & (DOMAINS == 1)].sum()
        assert field == pytest.approx(w[LABELS == c].sum() / 2)
    assert w[LABELS == 1].sum() == pytest.approx(1 / 3)  # herbarium-only class keeps its share


def test_sampler_draws_match_weights_and_are_seeded_per_epoch():
    s = BalancedSampler(LABELS, DOMAINS, class_balance=1.0, num_samples=30000, seed=7, num_replicas=1, rank=0)
    draws = np.array([i for i, _ in s])
    counts = np.bincount(LABELS[draws], minlength=3) / len(draws)
    assert np.allclose(counts, 1 / 3, atol=0.02)
    again = list(BalancedSampler(LABELS, DOMAINS, class_balance=1.0, num_samples=30000, seed=7, num_replicas=1, rank=0))
    assert [i for i, _ in again] == draws.tolist()
    assert len({seed for _, seed in again}) > 29000  # every draw has its own augmentation seed
    s.set_epoch(1)
    assert [i for i, _ in s] != draws.tolist()


def test_ranks_take_disjoint_slices_of_one_draw():
    kw = dict(class_balance=0.5, num_samples=100, seed=3, num_replicas=2)
    r0 = list(BalancedSampler(LABELS, DOMAINS, rank=0, **kw))
    r1 = list(BalancedSampler(LABELS, DOMAINS, rank=1, **kw))
    single = list(BalancedSampler(LABELS, DOMAINS, class_balance=0.5, num_samples=100, seed=3, num_replicas=1, rank=0))
    assert len(r0) == len(r1) == 50
    assert [x for pair in zip(r0, r1, strict=True) for x in pair] == single


def table() -> pd.DataFrame:
    rows = []
    for c, (n_h, n_f) in {"a": (20, 10), "b": (15, 0), "c": (5, 1), "d": (8, 2)}.items():
        rows += [{"path": f"train/herbarium/{c}/{i}.jpg", "class_id": c, "domain": "herbarium"} for i in range(n_h)]
        rows += [{"path": f"train/photo/{c}/{i}.jpg", "class_id": c, "domain": "field"} for i in range(n_f)]
    return pd.DataFrame(rows)


def test_split_is_stratified_per_class_and_domain():
    t = table()
    mask = validation_mask(t, field_fraction=0.2, herbarium_fraction=0.1, seed=0)
    val = t[mask]
    got = val.groupby(["class_id", "domain"]).size().to_dict()
    assert got == {("a", "field"): 2, ("a", "herbarium"): 2, ("b", "herbarium"): 2, ("c", "herbarium"): 1,
                   ("d", "field"): 1, ("d", "herbarium"): 1}
    # a class with a single photo keeps it for training
    assert not val[(val.class_id == "c") & (val.domain == "field")].size


def test_split_seed_stability():
    t = table()
    m1 = validation_mask(t, field_fraction=0.3, seed=5)
    assert (m1 == validation_mask(t, field_fraction=0.3, seed=5)).all()
    assert not (m1 == validation_mask(t, field_fraction=0.3, seed=6)).all()
    # shuffling the list file or removing a species does not change the other species' split
    shuffled = t.sample(frac=1.0, random_state=1)
    m2 = validation_mask(shuffled.reset_index(drop=True), field_fraction=0.3, seed=5)
    assert set(t.path[m1]) == set(shuffled.reset_index(drop=True).path[m2])
    without_a = t[t.class_id != "a"].reset_index(drop=True)
    m3 = validation_mask(without_a, field_fraction=0.3, seed=5)
    assert set(without_a.path[m3]) == set(t.path[m1]) - set(t.path[t.class_id == "a"])
