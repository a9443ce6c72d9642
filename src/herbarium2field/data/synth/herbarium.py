"""Herbarium sheet renderer: a pressed, browned specimen mounted on cream paper.

What makes a sheet look like a sheet (and what a model must learn to ignore): flat dark-brown leaves
with some undersides up, faded flowers, off-white textured paper, a label with lines of text, a colour
chart and scale bar, tape strips over the stems, sometimes a barcode, stamp or fragment packet.
Portrait, about 0.7 wide per unit of height, like real sheets.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from herbarium2field.data.synth.draw import (
    Palette,
    Shape,
    affine,
    bounds,
    hsv,
    mix,
    plant_shapes,
    rasterise,
    scale,
    vary_hsv,
)
from herbarium2field.data.synth.morphology import Species
from herbarium2field.data.synth.plant import grow
from herbarium2field.data.synth.texture import add_grain, field_shape, multiply, smooth_noise

SHEET_ASPECT = 0.7  # width / height
SUPERSAMPLE = 2  # drawn at 2x and reduced: anti-aliased edges at little cost
_CHART = [
    (250, 250, 250),
    (200, 200, 200),
    (150, 150, 150),
    (100, 100, 100),
    (50, 50, 50),
    (15, 15, 15),
    (40, 60, 160),
    (60, 160, 210),
    (50, 140, 70),
    (230, 210, 40),
    (210, 50, 40),
    (190, 60, 150),
    (150, 100, 60),
    (230, 140, 40),
]
_INKS = [(25, 25, 25), (40, 40, 55), (30, 35, 80), (60, 45, 35)]


def dried_palette(sp: Species, rng: np.random.Generator) -> Palette:
    """Colours of a pressed specimen: the species' drying tone, varied per sheet; flowers faded to brown."""
    h, s, v = vary_hsv(sp.dry_hsv, rng, (0.8, 1.2))
    leaf = hsv(h, s, v)
    fh, fs, fv = sp.flower_hsv
    petal = mix(hsv(fh, fs * 0.35, fv * 0.7), (120, 90, 55), 0.45)
    return Palette(
        leaf=leaf,
        underside=hsv(h + 0.02, s * 0.7, min(1.0, v * 1.5)),
        vein=scale(leaf, 1.6),
        stem=hsv(0.07, 0.45, v * 0.8),
        petal=petal,
        centre=scale(petal, 0.6),
        fruit=hsv(sp.fruit_hsv[0], 0.45, 0.22),
        outline=scale(leaf, 0.6),
        leaf_jitter=0.12,
        shrivel=0.6,
    )


def _fit(
    shapes: list[Shape],
    angle: float,
    box: tuple[float, float, float, float],
    fill: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Affine map that rotates the plant by ``angle`` and fits it into ``box`` (px), filling ``fill`` of it."""
    pts = np.concatenate([s.pts for s in shapes])
    probe = affine(1.0, angle, (0.0, 0.0), (0.0, 0.0))
    px = pts @ probe[:, :2].T
    lo, hi = px.min(axis=0), px.max(axis=0)
    bw, bh = box[2] - box[0], box[3] - box[1]
    k = fill * min(bw / max(hi[0] - lo[0], 1e-6), bh / max(hi[1] - lo[1], 1e-6))
    centre_units = np.linalg.solve(probe[:, :2], (lo + hi) / 2)
    slack = (1 - fill) * 0.5
    cx = (box[0] + box[2]) / 2 + rng.uniform(-slack, slack) * bw
    cy = (box[1] + box[3]) / 2 + rng.uniform(-slack, slack) * bh
    return affine(k, angle, (float(centre_units[0]), float(centre_units[1])), (cx, cy))


def _text_lines(
    d: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    rng: np.random.Generator,
    ink: tuple[int, int, int],
    lines: int,
    unit: float,
) -> None:
    """Lines of fake words (dark bars) inside ``box``; the first line is the bold title."""
    x0, y0, x1, y1 = box
    pitch = (y1 - y0) / (lines + 0.5)
    for i in range(lines):
        y = y0 + pitch * (i + 0.6)
        h = pitch * (0.55 if i == 0 else 0.38)
        x = x0 + (rng.uniform(0, 0.2) * (x1 - x0) if i == 0 else 0)
        end = x1 - rng.uniform(0, 0.45) * (x1 - x0)
        while x < end:
            w = rng.uniform(2.5, 9.0) * unit
            d.rectangle([x, y, min(x + w, end), y + h], fill=ink)
            x += w + rng.uniform(1.0, 2.0) * unit


def _label(
    d: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    paper: tuple[int, int, int],
    rng: np.random.Generator,
    unit: float,
) -> None:
    x0, y0, x1, y1 = box
    card = mix(paper, (252, 252, 248), rng.uniform(0.3, 0.9))
    d.rectangle(
        box, fill=card, outline=(90, 90, 90) if rng.random() < 0.6 else None, width=max(1, int(unit / 2))
    )
    pad = 0.06 * (x1 - x0)
    ink = _INKS[rng.integers(len(_INKS))]
    _text_lines(d, (x0 + pad, y0 + pad, x1 - pad, y1 - pad), rng, ink, int(rng.integers(5, 9)), unit)


def _colour_chart(
    d: ImageDraw.ImageDraw,
    x: float,
    y: float,
    length: float,
    thick: float,
    vertical: bool,
    rng: np.random.Generator,
) -> None:
    """A colour checker strip and, next to it, a black-and-white scale bar."""
    n = len(_CHART)
    step = length / (n + 4)
    d.rectangle(
        [x - 2, y - 2, x + (thick if vertical else length) + 2, y + (length if vertical else thick) + 2],
        fill=(30, 30, 30),
    )
    for i, c in enumerate(_CHART):
        a = i * step
        box = [x, y + a, x + thick, y + a + step - 1] if vertical else [x + a, y, x + a + step - 1, y + thick]
        d.rectangle(box, fill=c)
    a = n * step + step * 0.5
    seg = step * 0.7
    for i in range(5):  # scale bar: alternating segments
        c = (15, 15, 15) if i % 2 == 0 else (245, 245, 245)
        s = a + i * seg
        box = (
            [x, y + s, x + thick * 0.5, y + s + seg] if vertical else [x + s, y, x + s + seg, y + thick * 0.5]
        )
        d.rectangle(box, fill=c)


def _barcode(
    d: ImageDraw.ImageDraw, x: float, y: float, w: float, h: float, rng: np.random.Generator, unit: float
) -> None:
    d.rectangle([x, y, x + w, y + h], fill=(250, 250, 250))
    bx = x + 0.06 * w
    while bx < x + 0.94 * w:
        bw = unit * rng.choice([0.5, 0.5, 1.0, 1.5])
        d.rectangle([bx, y + 0.1 * h, bx + bw, y + 0.72 * h], fill=(10, 10, 10))
        bx += bw + unit * rng.choice([0.5, 1.0, 1.0])
    d.rectangle([x + 0.2 * w, y + 0.8 * h, x + 0.8 * w, y + 0.9 * h], fill=(60, 60, 60))


def _stamp(
    d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, rng: np.random.Generator, unit: float
) -> None:
    ink = [(150, 40, 50, 150), (60, 60, 150, 150), (110, 50, 130, 140)][rng.integers(3)]
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=max(1, int(unit)))
    d.ellipse(
        [cx - 0.7 * r, cy - 0.7 * r, cx + 0.7 * r, cy + 0.7 * r], outline=ink, width=max(1, int(unit / 2))
    )
    d.rectangle([cx - 0.45 * r, cy - 0.12 * r, cx + 0.45 * r, cy + 0.12 * r], fill=ink)


def _tape(
    d: ImageDraw.ImageDraw, shapes: list[Shape], m: np.ndarray, rng: np.random.Generator, unit: float
) -> None:
    """Strips of gummed linen tape across stems (and sometimes across a leaf petiole)."""
    stems = [s for s in shapes if s.kind == "line" and len(s.pts) > 2] or [
        s for s in shapes if s.kind == "line"
    ]
    if not stems:
        return
    colour = (238, 232, 214, int(rng.integers(170, 230)))
    for _ in range(int(rng.integers(2, 6))):
        s = stems[rng.integers(len(stems))]
        k = int(rng.integers(0, len(s.pts) - 1))
        p0, p1 = s.pts[k] @ m[:, :2].T + m[:, 2], s.pts[k + 1] @ m[:, :2].T + m[:, 2]
        along = (p1 - p0) / max(float(np.hypot(*(p1 - p0))), 1e-6)
        across = np.array([-along[1], along[0]])
        c = (p0 + p1) / 2
        half_len, half_w = rng.uniform(5, 9) * unit, rng.uniform(1.2, 2.0) * unit
        corners = [
            c + across * half_len + along * half_w,
            c + across * half_len - along * half_w,
            c - across * half_len - along * half_w,
            c - across * half_len + along * half_w,
        ]
        d.polygon([tuple(p) for p in corners], fill=colour, outline=(200, 195, 180, colour[3]))


def render_herbarium(sp: Species, rng: np.random.Generator, size: int) -> Image.Image:
    """One herbarium sheet of ``sp``, ``size`` px wide (the short side), portrait."""
    ss = SUPERSAMPLE
    width, height = size, int(round(size / SHEET_ASPECT))
    W, H = width * ss, height * ss
    unit = W / 256  # drawing unit: 1 px of a 256 px wide sheet
    tone = rng.uniform(0, 1)
    paper = mix((252, 250, 242), (240, 229, 200), tone)  # white to yellowed
    img = Image.new("RGB", (W, H), paper)
    d = ImageDraw.Draw(img)
    da = ImageDraw.Draw(img, "RGBA")
    margin = 0.04 * W

    # Sheet furniture: label in a bottom corner, colour chart along an edge.
    lw, lh = rng.uniform(0.38, 0.5) * W, rng.uniform(0.12, 0.17) * H
    right = rng.random() < 0.8
    lx = W - margin - lw if right else margin
    label = (lx, H - margin - lh, lx + lw, H - margin)
    chart_edge = rng.choice(["top", "left", "right", "none"], p=[0.45, 0.2, 0.2, 0.15])
    thick = 0.045 * W
    top, left, rightx = margin, margin, W - margin
    if chart_edge == "top":
        top += thick + 0.02 * W
    elif chart_edge == "left":
        left += thick + 0.02 * W
    elif chart_edge == "right":
        rightx -= thick + 0.02 * W
    box = (left, top, rightx, label[1] - 0.02 * H)

    palette = dried_palette(sp, rng)
    shapes = plant_shapes(grow(sp, rng, pressed=True), sp, palette, rng)
    x0, y0, x1, y1 = bounds(shapes)
    if (x1 - x0) < 0.5 * (y1 - y0) and rng.random() < 0.5:  # a slender plant: mount a second shoot beside it
        more = plant_shapes(grow(sp, rng, pressed=True), sp, palette, rng)
        dx = (x1 - x0) * rng.uniform(0.7, 1.0) - bounds(more)[0] + x0
        dy = rng.uniform(-0.15, 0.05) * (y1 - y0)
        shapes += [Shape(s.kind, s.pts + (dx, dy), s.color, s.width, s.outline) for s in more]
    angle = rng.normal(0, 0.12) + (np.pi / 2 if sp.habit == "vine" and rng.random() < 0.3 else 0.0)
    m = _fit(shapes, angle, box, rng.uniform(0.82, 0.97), rng)
    rasterise(d, shapes, m)
    _tape(da, shapes, m, rng, unit)

    _label(d, label, paper, rng, unit)
    if rng.random() < 0.35:  # a small determination slip
        sx = margin if right else W - margin - 0.3 * W
        slip = (sx, H - margin - 0.07 * H, sx + 0.3 * W, H - margin)
        _label(d, slip, paper, rng, unit * 0.7)
    if chart_edge == "top":
        _colour_chart(d, margin + rng.uniform(0, 0.3) * W, margin, 0.6 * W, thick, False, rng)
    elif chart_edge in ("left", "right"):
        x = margin if chart_edge == "left" else W - margin - thick
        _colour_chart(d, x, margin + rng.uniform(0.05, 0.25) * H, 0.45 * H, thick, True, rng)
    if rng.random() < 0.6:
        bw = 0.26 * W
        bx = label[0] if rng.random() < 0.5 else label[2] - bw
        _barcode(d, bx, label[1] - 0.065 * W - 0.015 * H, bw, 0.065 * W, rng, unit)
    if rng.random() < 0.3:
        _stamp(da, rng.uniform(0.15, 0.85) * W, rng.uniform(0.1, 0.35) * H, 0.06 * W, rng, unit)
    if rng.random() < 0.2:  # fragment packet: a folded envelope with a flap
        px, py, pw, ph = margin, label[1] - 0.2 * H, 0.2 * W, 0.13 * H
        d.rectangle(
            [px, py, px + pw, py + ph], fill=mix(paper, (255, 255, 255), 0.5), outline=(150, 140, 120)
        )
        d.line([px, py + 0.3 * ph, px + pw, py + 0.3 * ph], fill=(150, 140, 120), width=max(1, int(unit / 2)))

    sheet = img.reduce(ss)
    return _age(sheet, rng)


def _age(sheet: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Paper mottling, browned edges and a scanner's colour cast (one smooth gain field), then grain."""
    h, w = field_shape(sheet)
    warm = rng.uniform(-0.01, 0.03)  # scanners and old paper drift warm, never green or pink
    cast = np.array([1 + warm, 1.0, 1 - 1.5 * warm], dtype=np.float32)
    mottle = 1.0 + 0.035 * smooth_noise(rng, h, w, 5) + 0.02 * smooth_noise(rng, h, w, 20)
    gain = mottle[:, :, None] * cast
    if rng.random() < 0.5:  # browned edges of old sheets
        fy = np.exp(-np.minimum(np.arange(h), np.arange(h)[::-1]) / (0.03 * h))
        fx = np.exp(-np.minimum(np.arange(w), np.arange(w)[::-1]) / (0.03 * w))
        edge = np.maximum(fy[:, None], fx[None, :]) * rng.uniform(0.05, 0.15)
        gain *= 1 - edge[:, :, None] * np.array([0.3, 0.5, 0.9])
    sheet = multiply(sheet, gain / gain.max() * rng.uniform(0.97, 1.0))
    return add_grain(sheet, rng, rng.uniform(2.0, 4.0))
