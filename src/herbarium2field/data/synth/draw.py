"""Turn a :class:`~.plant.Plant` into coloured shapes and rasterise them with PIL.

Renderers choose the colours (:class:`Palette`) and where the plant goes on the picture (an affine map
from plant units to pixels); everything here is domain-neutral.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from herbarium2field.data.synth.leaf import LeafGeometry, leaf_geometry
from herbarium2field.data.synth.morphology import Species
from herbarium2field.data.synth.plant import FlowerPlacement, LeafPlacement, Plant

RGB = tuple[int, int, int]


@dataclass
class Shape:
    """A filled polygon (``width`` = outline width) or a polyline (``width`` = stroke width), plant units."""

    kind: str  # poly | line
    pts: np.ndarray
    color: RGB
    width: float = 0.0
    outline: RGB | None = None


@dataclass
class Palette:
    leaf: RGB
    underside: RGB
    vein: RGB
    stem: RGB
    petal: RGB
    centre: RGB
    fruit: RGB
    outline: RGB | None = None  # leaf edge colour (pressed leaves have dark edges)
    leaf_jitter: float = 0.1  # per-leaf brightness spread
    shade: float = 0.0  # strength of the lighting that depends on leaf direction
    light: float = np.pi / 2  # direction the light comes from
    shrivel: float = 0.0  # 0 fresh flowers .. 1 pressed, crumpled petals
    half_shade: float = 0.0  # relative brightness difference between the two halves of a blade


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def vary_hsv(
    base: tuple[float, float, float], rng: np.random.Generator, spread: tuple[float, float]
) -> tuple[float, float, float]:
    """A species' colour varied per image: hue shifted by up to 0.02 either way, saturation and value
    each scaled by a factor drawn from ``spread`` (in that order, so one seed gives one image)."""
    h, s, v = base
    return h + rng.uniform(-0.02, 0.02), s * rng.uniform(*spread), v * rng.uniform(*spread)


def scale(color: RGB, factor: float) -> RGB:
    return tuple(min(max(int(c * factor), 0), 255) for c in color)  # type: ignore[return-value]


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(x * (1 - t) + y * t + 0.5) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _rotation(angle: float, factor: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, s], [-s, c]]) * factor


@dataclass
class _Template:
    """A leaf geometry packed into one point array, so that placing a leaf is one matrix product."""

    pts: np.ndarray
    parts: list[tuple[str, int, int, int]]  # (blade | half | vein, start, stop, vein rank)


def _pack(geom: LeafGeometry) -> _Template:
    arrays, parts, at = [], [], 0
    items = [("blade", b, 0) for b in geom.blades] + [("half", h, 0) for h in geom.halves]
    items += [("vein", v, r) for v, r in geom.veins]
    for kind, pts, rank in items:
        arrays.append(pts)
        parts.append((kind, at, at + len(pts), rank))
        at += len(pts)
    return _Template(np.concatenate(arrays), parts)


def _leaf_shapes(tpl: _Template, leaf: LeafPlacement, pal: Palette, rng: np.random.Generator) -> list[Shape]:
    direction = np.array([np.cos(leaf.angle), np.sin(leaf.angle)])
    base = np.asarray(leaf.anchor) + leaf.petiole * direction
    q = tpl.pts.copy()
    q[:, 1] = (q[:, 1] + leaf.bend * q[:, 0] ** 2) * (leaf.tilt * (-1.0 if leaf.flip else 1.0))
    q = q @ _rotation(leaf.angle, leaf.size) + base

    light = 1.0 + pal.shade * (0.6 * np.cos(leaf.angle - pal.light) + 0.5 * (leaf.tilt - 0.8))
    colour = scale(pal.underside if leaf.flip else pal.leaf, light * (1 + rng.normal(0, pal.leaf_jitter)))
    half = scale(colour, 1.0 + pal.half_shade * (1 if np.sin(leaf.angle - pal.light) > 0 else -1))
    vein = mix(colour, pal.vein, 0.55)
    out: list[Shape] = []
    if leaf.petiole > 0:
        out.append(Shape("line", np.array([leaf.anchor, base]), pal.stem, 0.022 * leaf.size))
    for kind, a, b, rank in tpl.parts:
        if kind == "blade":
            out.append(Shape("poly", q[a:b], colour, 0.008 * leaf.size, pal.outline))
        elif kind == "half":
            if pal.half_shade:
                out.append(Shape("poly", q[a:b], half))
        else:
            out.append(Shape("line", q[a:b], vein, (0.018 if rank == 0 else 0.008) * leaf.size))
    return out


def _flower_shapes(
    f: FlowerPlacement, pal: Palette, rng: np.random.Generator, n_petals: int, petal_shape: str
) -> list[Shape]:
    rot = _rotation(f.angle, f.size)
    c = np.asarray(f.centre)

    def place(p: np.ndarray) -> np.ndarray:
        q = p.copy()
        q[:, 1] *= f.tilt
        return q @ rot + c

    if f.kind == "berry":
        out = []
        for _ in range(int(rng.integers(1, 4))):
            off = rng.normal(0, 0.5, 2)
            out.append(
                Shape(
                    "poly",
                    place(_circle(0.55, 12) + off),
                    scale(pal.fruit, rng.uniform(0.8, 1.15)),
                    0.05,
                    scale(pal.fruit, 0.6),
                )
            )
            out.append(Shape("poly", place(_circle(0.12, 6) + off + 0.2), scale(pal.fruit, 1.5)))
        return out
    if f.kind == "pod":
        t = np.linspace(0, 1, 12)
        w = 0.22 * np.sin(np.pi * t) ** 0.7
        pod = np.concatenate([np.stack([t * 2.4, w], 1), np.stack([t[::-1] * 2.4, -w[::-1]], 1)])
        return [Shape("poly", place(pod), pal.fruit, 0.04, scale(pal.fruit, 0.6))]
    if f.kind == "bud":
        return [
            Shape(
                "poly",
                place(_circle(0.4, 10) * [1.4, 0.8]),
                mix(pal.petal, pal.leaf, 0.5),
                0.04,
                scale(pal.petal, 0.7),
            )
        ]
    phi = np.linspace(0, 2 * np.pi, n_petals * 10, endpoint=False)
    lobe = np.abs(np.cos(n_petals * phi / 2))
    if petal_shape == "pointed":
        r = 0.35 + 0.65 * lobe**2.2
    elif petal_shape == "notched":
        r = 0.35 + 0.65 * lobe**0.6 - 0.18 * lobe**40
    else:
        r = 0.4 + 0.6 * lobe**0.5
    if pal.shrivel > 0:  # pressed petals: irregular, partly folded
        per_petal = rng.uniform(1 - 0.5 * pal.shrivel, 1.0, n_petals)
        r = r * np.repeat(per_petal, 10)[np.arange(len(phi))] * (1 - 0.25 * pal.shrivel)
    corolla = np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)
    petal = scale(pal.petal, rng.uniform(0.92, 1.08))
    return [
        Shape("poly", place(corolla), petal, 0.03, scale(petal, 0.75)),
        Shape("poly", place(_circle(0.22, 10)), pal.centre),
    ]


def _circle(r: float, n: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], axis=1) * r


def plant_shapes(
    plant: Plant, sp: Species, pal: Palette, rng: np.random.Generator, templates: int = 3
) -> list[Shape]:
    """Coloured shapes of a plant, back to front: stems, leaves, flowers and fruits.

    Only ``templates`` leaf outlines are computed per plant and reused (rotated, scaled, bent) for
    speed; within-plant leaf variation comes mostly from the placement anyway.
    """
    shapes = [Shape("line", pts, pal.stem, width) for pts, width in plant.stems]
    packed = [_pack(leaf_geometry(sp, rng)) for _ in range(templates)]
    for i, leaf in enumerate(plant.leaves):
        shapes.extend(_leaf_shapes(packed[i % templates], leaf, pal, rng))
    for f in plant.flowers:
        shapes.extend(_flower_shapes(f, pal, rng, sp.petals, sp.petal_shape))
    return shapes


def bounds(shapes: list[Shape]) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of all shapes in plant units."""
    pts = np.concatenate([s.pts for s in shapes])
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def affine(
    scale_px: float, angle: float, centre_units: tuple[float, float], centre_px: tuple[float, float]
) -> np.ndarray:
    """2x3 map from plant units (y up) to pixels (y down): rotate about ``centre_units``, scale, move."""
    c, s = np.cos(angle) * scale_px, np.sin(angle) * scale_px
    m = np.array([[c, -s], [-s, -c]])  # rotation, then flip y
    t = np.asarray(centre_px) - m @ np.asarray(centre_units)
    return np.concatenate([m, t[:, None]], axis=1)


def rasterise(draw: ImageDraw.ImageDraw, shapes: list[Shape], m: np.ndarray) -> None:
    """Draw shapes with the affine map ``m`` (see :func:`affine`); widths scale with it, at least 1 px."""
    if not shapes:
        return
    px_per_unit = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    xy = (np.concatenate([s.pts for s in shapes]) @ m[:, :2].T + m[:, 2]).ravel().tolist()
    at = 0
    for s in shapes:
        n = 2 * len(s.pts)
        pts, at = xy[at : at + n], at + n
        width = max(1, int(s.width * px_per_unit + 0.5))
        if s.kind == "line":
            draw.line(pts, fill=s.color, width=width, joint="curve" if n > 4 and width > 2 else None)
        elif s.outline is not None:
            draw.polygon(pts, fill=s.color, outline=s.outline, width=width)
        else:
            draw.polygon(pts, fill=s.color)
