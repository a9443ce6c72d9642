"""Heads: ArcFace applies its margin in training only; inference logits are s·cosθ; softmax is plain CE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from herbarium2field.models.heads import ArcFaceHead, DomainSubcenterArcFaceHead, SoftmaxHead, create_head


def test_arcface_inference_logits_are_scaled_cosines_without_margin():
    torch.manual_seed(0)
    head = ArcFaceHead(dim=8, num_classes=5, scale=15.0, margin=0.15)
    emb = torch.randn(4, 8)
    cos = F.normalize(emb, dim=1) @ head.class_weights.t()
    assert torch.allclose(head.logits(emb), 15.0 * cos, atol=1e-5)


def test_arcface_training_loss_adds_the_margin_to_the_true_class_only():
    torch.manual_seed(0)
    s, m = 15.0, 0.15
    head = ArcFaceHead(dim=8, num_classes=5, scale=s, margin=m)
    emb, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    cos = F.normalize(emb, dim=1) @ head.class_weights.t()
    theta = torch.acos(cos[torch.arange(6), y].clamp(-1, 1))
    margin_logits = cos.clone()
    margin_logits[torch.arange(6), y] = torch.cos(theta + m)
    expected = F.cross_entropy(s * margin_logits, y, reduction="none")
    assert torch.allclose(head.losses(emb, y), expected, atol=1e-4)
    # the plain (margin-free) cross-entropy is strictly smaller: the margin makes training harder
    assert (F.cross_entropy(head.logits(emb), y, reduction="none") < expected).all()


def test_arcface_margin_zero_equals_cross_entropy_on_inference_logits():
    torch.manual_seed(1)
    head = ArcFaceHead(dim=8, num_classes=5, scale=10.0, margin=0.0)
    emb, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    assert torch.allclose(head.losses(emb, y), F.cross_entropy(head.logits(emb), y, reduction="none"), atol=1e-4)


def test_subcenter_arcface_takes_the_best_subcenter():
    torch.manual_seed(0)
    head = create_head("arcface", 8, 5, subcenters=3)
    emb = torch.randn(4, 8)
    centres = head.class_weights.view(5, 3, 8)
    cos = torch.einsum("bd,ckd->bck", F.normalize(emb, dim=1), centres).amax(dim=2)
    assert torch.allclose(head.logits(emb), head.scale * cos, atol=1e-5)


def test_domain_subcenters_use_the_sample_domain_in_training_and_max_at_inference():
    torch.manual_seed(0)
    head = DomainSubcenterArcFaceHead(dim=8, num_classes=3, scale=10.0, margin=0.2)
    with torch.no_grad():
        head.W.zero_()
        head.W[0, 0, 0] = 1.0  # class 0 herbarium centre along e0
        head.W[0, 1, 1] = 1.0  # class 0 field centre along e1
        head.W[1, :, 2] = 1.0
        head.W[2, :, 3] = 1.0
    photo = torch.zeros(1, 8)
    photo[0, 1] = 1.0  # lies on class 0's field centre
    y = torch.tensor([0])
    as_field = head.losses(photo, y, torch.tensor([1]))
    as_sheet = head.losses(photo, y, torch.tensor([0]))
    assert as_field < as_sheet  # matched against its own domain's centre, it is already close
    assert torch.allclose(head.logits(photo)[0, 0], torch.tensor(10.0))  # max over the two centres
    expected = F.cross_entropy(10.0 * torch.tensor([[math.cos(0.2), 0.0, 0.0]]), y)
    assert torch.allclose(as_field, expected, atol=1e-5)


def test_softmax_head_label_smoothing_and_weights():
    torch.manual_seed(0)
    head = SoftmaxHead(8, 4, label_smoothing=0.1)
    emb, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(head.losses(emb, y), F.cross_entropy(head.logits(emb), y, reduction="none",
                                                                label_smoothing=0.1))
    w = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    assert torch.allclose(head.loss(emb, y, weights=w), head.losses(emb, y)[[0, 4]].mean())


def test_unknown_head():
    with pytest.raises(ValueError, match="unknown head"):
        create_head("cosface", 8, 3)
