"""Cross-domain losses (models/domain_losses.py): which pairs and triplets they use, their values against plain
reference formulas, the gradient reversal of the domain-adversarial loss, and how training adds them up."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from herbarium2field.config import load_config
from herbarium2field.models.domain_losses import (
    CrossDomainMetricLoss,
    DomainAdversarialLoss,
    build_extra_losses,
    cross_domain_pairs,
    cross_domain_triplets,
)

# six images: species 0 has two sheets (0, 5) and a photo (1); species 1 a sheet (2) and a photo (3);
# species 2 only a sheet (4)
LABELS = torch.tensor([0, 0, 1, 1, 2, 0])
DOMAINS = torch.tensor([0, 1, 0, 1, 0, 0])


def pairs(a: torch.Tensor, b: torch.Tensor) -> set[tuple[int, int]]:
    return set(zip(a.tolist(), b.tolist(), strict=True))


def test_positives_are_the_same_species_in_the_other_domain_only():
    a1, p, a2, n = cross_domain_pairs(LABELS, DOMAINS)
    assert pairs(a1, p) == {(0, 1), (1, 0), (5, 1), (1, 5), (2, 3), (3, 2)}  # never sheet 0 with sheet 5
    other = {(i, j) for i in range(6) for j in range(6) if LABELS[i] != LABELS[j]}
    assert pairs(a2, n) == other


def test_triplets_are_photo_sheet_of_its_species_and_another_species():
    torch.manual_seed(3)
    a, p, n = cross_domain_triplets(LABELS, DOMAINS)
    assert sorted(zip(a.tolist(), p.tolist(), strict=True)) == [(1, 0), (1, 5), (3, 2)]
    assert all(LABELS[i] != LABELS[k] for i, k in zip(a.tolist(), n.tolist(), strict=True))
    none = cross_domain_triplets(LABELS, torch.zeros(6, dtype=torch.long))  # sheets only: nothing to pull together
    assert all(len(t) == 0 for t in none)


def test_supcon_equals_the_formula_over_cross_domain_pairs():
    """For each anchor with a cross-domain positive: mean over its positives of
    -log(exp(s_ap / T) / sum over its positives and negatives of exp(s_ak / T)), T = 0.1, averaged over anchors."""
    torch.manual_seed(0)
    emb = torch.randn(6, 5)
    got = CrossDomainMetricLoss("supcon", 0.1)(emb, LABELS, DOMAINS)
    e = F.normalize(emb, dim=1)
    s = e @ e.t() / 0.1
    a1, p, a2, n = cross_domain_pairs(LABELS, DOMAINS)
    per_anchor = []
    for i in range(6):
        pos, neg = p[a1 == i].tolist(), n[a2 == i].tolist()
        if pos:
            den = torch.logsumexp(s[i, pos + neg], 0)
            per_anchor.append(torch.stack([den - s[i, j] for j in pos]).mean())
    assert got.item() == pytest.approx(torch.stack(per_anchor).mean().item(), rel=1e-5)
    # pulling each photo onto its species' sheets lowers it
    together = emb.clone()
    together[1], together[3] = emb[0], emb[2]
    assert CrossDomainMetricLoss("supcon", 0.1)(together, LABELS, DOMAINS) < got


def test_triplet_equals_the_margin_formula():
    torch.manual_seed(0)
    emb = torch.randn(6, 5)
    torch.manual_seed(7)
    got = CrossDomainMetricLoss("triplet", 0.1)(emb, LABELS, DOMAINS)
    torch.manual_seed(7)  # the same random negatives
    a, p, n = cross_domain_triplets(LABELS, DOMAINS)
    e = F.normalize(emb, dim=1)
    d = torch.cdist(e, e)
    per = F.relu(d[a, p] - d[a, n] + 0.2)
    assert got.item() == pytest.approx(per[per > 0].mean().item(), rel=1e-5)  # mean of the non-zero terms


@pytest.mark.parametrize("kind", ["supcon", "triplet"])
def test_a_batch_without_cross_domain_positives_gives_zero_with_a_gradient(kind):
    emb = torch.randn(4, 5, requires_grad=True)
    loss = CrossDomainMetricLoss(kind, 0.1)(emb, torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None and torch.equal(emb.grad, torch.zeros(4, 5))


def test_domain_adversarial_reverses_the_gradient_into_the_embedding_only():
    torch.manual_seed(0)
    dann = DomainAdversarialLoss(5, weight=0.3).eval()
    emb = torch.randn(6, 5, requires_grad=True)
    loss = dann(emb, LABELS, DOMAINS)
    plain = F.binary_cross_entropy_with_logits(dann.classifier(emb).squeeze(1), DOMAINS.float())
    assert loss.item() == pytest.approx(plain.item())  # forward: the domain classifier's own loss
    loss.backward()
    reversed_grad = emb.grad.clone()
    classifier_grad = [p.grad.clone() for p in dann.classifier.parameters()]
    emb.grad = None
    dann.zero_grad()
    F.binary_cross_entropy_with_logits(dann.classifier(emb).squeeze(1), DOMAINS.float()).backward()
    torch.testing.assert_close(reversed_grad, -emb.grad)  # the embedding learns to confuse the classifier
    for got, want in zip(classifier_grad, [p.grad for p in dann.classifier.parameters()], strict=True):
        torch.testing.assert_close(got, want)  # ... while the classifier learns to tell the domains apart


def cfg(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(None, ["model.backbone=mobilenetv3_small_050", "model.embedding_dim=8", *sets])


def test_build_extra_losses_follows_the_config():
    assert dict(build_extra_losses(cfg(), 8)) == {}
    assert dict(build_extra_losses(cfg("train.cross_domain_loss=supcon", "train.cross_domain_weight=0"), 8)) == {}
    built = build_extra_losses(cfg("train.cross_domain_loss=triplet", "train.cross_domain_weight=0.4",
                                   "train.domain_adversarial=0.2"), 8)
    assert set(built) == {"triplet", "domain_adv"}
    assert built["triplet"].kind == "triplet" and built["triplet"].weight == 0.4 and built["domain_adv"].weight == 0.2
    assert built["domain_adv"].classifier[0].in_features == 8


def test_training_adds_each_extra_loss_times_its_weight():
    from herbarium2field.models.lightning import H2FLightningModule

    torch.manual_seed(0)
    module = H2FLightningModule(cfg("train.cross_domain_loss=supcon", "train.cross_domain_weight=0.4",
                                    "train.domain_adversarial=0.2", "model.head=softmax"), 3,
                                load_weights=False).eval()
    x = torch.randn(6, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer
        total = module.training_step((x, LABELS, DOMAINS, torch.arange(6)), 0)
    emb = module.net.embed(x)
    head = module.net.head.loss(emb, LABELS)
    supcon = module.extra_losses["supcon"](emb, LABELS, DOMAINS)
    dann = module.extra_losses["domain_adv"](emb, LABELS, DOMAINS)
    assert total.item() == pytest.approx((head + 0.4 * supcon + 0.2 * dann).item(), rel=1e-5)
    assert supcon.item() > 0 and dann.item() > 0
    assert set(dict(module.named_parameters())) >= {"extra_losses.domain_adv.classifier.0.weight"}
