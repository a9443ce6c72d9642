"""Herbarium → field appearance transfer for training sheets (issue 7 ingredients)."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from herbarium2field.config import AugmentConfig


def appearance_transfer_steps(aug: AugmentConfig, *, field_pool: list[str] | None = None,
                              loader: Callable[[str], Image.Image] | None = None) -> list[Callable]:
    """PIL-image steps applied to herbarium sheets before cropping; empty when every switch is off."""
    steps: list[Callable] = []
    return steps
