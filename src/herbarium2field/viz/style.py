"""Shared plot style: a colour-blind-safe palette and figure defaults (150 dpi PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Okabe-Ito palette (colour-blind safe).
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
HERBARIUM_COLOR = "#E69F00"  # orange: dried sheets
FIELD_COLOR = "#009E73"  # green: living plants
DPI = 150


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save as PNG at the house DPI, creating the folder, then close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
