"""One individual plant: where its stems, leaves and flowers are, in plant units (height ~1, y up).

Individuals of a species differ in size, number of nodes, pose and missing leaves. ``pressed=True``
gives the pose of a herbarium specimen (everything flat and face-up, spread to fill the sheet, some
leaves showing their underside); ``pressed=False`` a living plant (drooping, foreshortened leaves).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from herbarium2field.data.synth.morphology import Species


@dataclass
class LeafPlacement:
    anchor: tuple[float, float]  # node where the petiole starts
    angle: float  # direction of the leaf (radians, counter-clockwise from +x)
    size: float  # blade length
    petiole: float  # petiole length
    tilt: float = 1.0  # width foreshortening (1 = seen face-on)
    bend: float = 0.0  # curvature of the midrib
    flip: bool = False  # underside up


@dataclass
class FlowerPlacement:
    centre: tuple[float, float]
    angle: float  # orientation (direction the flower faces or points)
    size: float  # radius
    kind: str  # flower | bud | berry | pod
    tilt: float = 1.0


@dataclass
class Plant:
    stems: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (polyline, width)
    leaves: list[LeafPlacement] = field(default_factory=list)
    flowers: list[FlowerPlacement] = field(default_factory=list)


def stem_path(
    start: tuple[float, float],
    angle: float,
    length: float,
    sway: float,
    rng: np.random.Generator,
    n: int = 14,
) -> tuple[np.ndarray, np.ndarray]:
    """A gently curving stem: points and the tangent angle at each point."""
    s = np.linspace(0.0, 1.0, n)
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 4.0)
    theta = angle + sway * 6 * (np.sin(phase + freq * s * np.pi) - np.sin(phase))
    step = length / (n - 1)
    dx, dy = np.cos(theta[:-1]) * step, np.sin(theta[:-1]) * step
    pts = np.stack([np.concatenate([[0.0], np.cumsum(dx)]), np.concatenate([[0.0], np.cumsum(dy)])], axis=1)
    return pts + np.asarray(start), theta


def _at(pts: np.ndarray, theta: np.ndarray, f: float) -> tuple[tuple[float, float], float]:
    """Point and tangent at fraction ``f`` of a stem path."""
    i = f * (len(pts) - 1)
    k = min(int(i), len(pts) - 2)
    w = i - k
    p = pts[k] * (1 - w) + pts[k + 1] * w
    return (float(p[0]), float(p[1])), float(theta[k] * (1 - w) + theta[k + 1] * w)


def _droop(angle: float, amount: float) -> float:
    """Bend sign that makes a leaf's tip fall towards the ground."""
    return -amount * float(np.sign(np.cos(angle)) or 1.0)


class _Grower:
    def __init__(self, sp: Species, rng: np.random.Generator, pressed: bool) -> None:
        self.sp, self.rng, self.pressed = sp, rng, pressed
        self.plant = Plant()
        self.height = float(rng.uniform(0.85, 1.1))
        self.missing = 0.12 if pressed else 0.07

    def leaf(self, anchor: tuple[float, float], angle: float, size: float, tilt: float = 1.0) -> None:
        rng, sp = self.rng, self.sp
        if rng.random() < self.missing:
            return
        angle += rng.normal(0, 0.12)
        size *= rng.uniform(0.85, 1.15)
        if self.pressed:
            bend, flip, tilt = rng.normal(0, 0.08), bool(rng.random() < 0.25), 1.0
        else:
            bend = _droop(angle, sp.leaf_droop * rng.uniform(0.4, 1.4)) + rng.normal(0, 0.05)
            flip, tilt = False, tilt * rng.uniform(0.55, 1.0)
        self.plant.leaves.append(
            LeafPlacement(anchor, angle, size, sp.petiole * size * rng.uniform(0.8, 1.2), tilt, bend, flip)
        )

    def leaves_at_node(self, anchor: tuple[float, float], theta: float, index: int, size: float) -> None:
        spread = np.radians(self.sp.leaf_angle)
        arrangement = self.sp.arrangement
        if arrangement == "alternate":
            side = 1 if index % 2 else -1
            self.leaf(anchor, theta + side * spread, size)
        elif arrangement == "opposite":
            tilt = 1.0 if index % 2 == 0 or self.pressed else 0.6
            for side in (1, -1):
                self.leaf(anchor, theta + side * spread, size, tilt)
        else:  # whorled: two in profile, the others towards and away from the viewer
            for side in (1, -1):
                self.leaf(anchor, theta + side * spread, size)
            for side in (1, -1):
                self.leaf(anchor, theta + side * spread * 0.35, size * 0.75, 0.5)

    def stem(
        self,
        start: tuple[float, float],
        angle: float,
        length: float,
        width: float,
        sway: float,
        nodes: int,
        size: float,
        top: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        pts, theta = stem_path(start, angle, length, sway, self.rng)
        self.plant.stems.append((pts, width))
        for i, f in enumerate(np.linspace(0.12, 0.84, nodes)):
            anchor, t = _at(pts, theta, float(np.clip(f + self.rng.uniform(-0.03, 0.03), 0.05, 0.95)))
            shrink = 1 - 0.45 * f**1.5
            self.leaves_at_node(anchor, t, i, size * shrink)
            if self.sp.inflorescence == "axillary" and i % 2 == 1 and f > 0.3:
                self.flower(anchor, t + (0.6 if i % 4 == 1 else -0.6), 0.75)
        if top:
            tip, t = _at(pts, theta, 1.0)
            self.inflorescence(tip, t)
        return pts, theta

    def flower(
        self, centre: tuple[float, float], angle: float, scale: float, kind: str | None = None
    ) -> None:
        rng, sp = self.rng, self.sp
        if kind is None:
            if sp.inflorescence == "none" or (sp.fruit != "none" and rng.random() < 0.35):
                kind = "berry" if sp.fruit == "berries" else "pod"
            else:
                kind = "bud" if rng.random() < 0.15 else "flower"
        tilt = 1.0 if self.pressed else float(rng.uniform(0.45, 1.0))
        size = sp.flower_size * self.height * scale * rng.uniform(0.85, 1.15)
        self.plant.flowers.append(FlowerPlacement(centre, angle + rng.normal(0, 0.3), size, kind, tilt))

    def pedicel(self, start: tuple[float, float], angle: float, length: float, scale: float) -> None:
        end = (start[0] + np.cos(angle) * length, start[1] + np.sin(angle) * length)
        self.plant.stems.append((np.array([start, end]), 0.004 * self.height))
        self.flower((float(end[0]), float(end[1])), angle, scale)

    def inflorescence(self, tip: tuple[float, float], theta: float) -> None:
        kind, rng, h = self.sp.inflorescence, self.rng, self.height
        if kind == "solitary":
            self.flower(tip, theta, 1.0)
        elif kind == "cluster" or (kind == "none" and self.sp.fruit != "none"):
            for a in np.linspace(-0.8, 0.8, int(rng.integers(3, 6))):
                self.pedicel(tip, theta + a + rng.normal(0, 0.1), 0.05 * h * rng.uniform(0.7, 1.3), 0.7)
        elif kind == "spike":
            spike, spike_t = stem_path(tip, theta, 0.22 * h, 0.01, rng, n=8)
            self.plant.stems.append((spike, 0.006 * h))
            count = int(rng.integers(8, 15))
            for i, f in enumerate(np.linspace(0.0, 1.0, count)):
                c, t = _at(spike, spike_t, float(f))
                off = 0.018 * h * (1 if i % 2 else -1)
                centre = (c[0] + np.cos(t + np.pi / 2) * off, c[1] + np.sin(t + np.pi / 2) * off)
                self.flower(
                    centre, t + (0.7 if i % 2 else -0.7), 0.45 * (1 - 0.4 * f), "bud" if f > 0.8 else None
                )
        elif kind == "umbel":
            count = int(rng.integers(5, 10))
            for a in np.linspace(-1.0, 1.0, count):
                self.pedicel(tip, theta + a, 0.11 * h * rng.uniform(0.85, 1.15), 0.5)


def grow(sp: Species, rng: np.random.Generator, *, pressed: bool) -> Plant:
    """Lay out one individual of ``sp`` (see module doc for ``pressed``)."""
    g = _Grower(sp, rng, pressed)
    h, leaf = g.height, sp.leaf_length * g.height
    nodes = int(rng.integers(sp.nodes[0], sp.nodes[1] + 1))
    up = np.pi / 2 + rng.normal(0, 0.08)
    if sp.habit in ("erect", "branched"):
        main, main_t = g.stem((0.0, 0.0), up, h, 0.012 * h, sp.stem_curve, nodes, leaf)
        if sp.habit == "branched":
            for _ in range(int(rng.integers(1, 4))):
                start, t = _at(main, main_t, float(rng.uniform(0.3, 0.6)))
                side = 1 if rng.random() < 0.5 else -1
                g.stem(
                    start,
                    t + side * rng.uniform(0.45, 0.85),
                    h * rng.uniform(0.35, 0.55),
                    0.008 * h,
                    sp.stem_curve,
                    max(2, nodes // 2),
                    leaf * 0.8,
                )
    elif sp.habit == "vine":
        angle = up + rng.uniform(-0.5, 0.5)
        g.stem((0.0, 0.0), angle, h * 1.1, 0.008 * h, 0.09 + sp.stem_curve, nodes + 2, leaf)
    else:  # rosette / tufted: basal leaves, flowering scapes
        radial = pressed or rng.random() < 0.4  # pressed flat, or photographed from above
        count = nodes + (4 if sp.habit == "tufted" else 0)
        if radial and sp.habit == "rosette":
            angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
        else:
            angles = np.linspace(np.radians(25), np.radians(155), count)
        for a in rng.permutation(angles):
            base = (float(rng.normal(0, 0.015 * h)), 0.0)
            g.leaf(
                base,
                float(a + rng.normal(0, 0.1)),
                leaf * rng.uniform(0.75, 1.1),
                1.0 if radial else float(rng.uniform(0.5, 1.0)),
            )
        if sp.inflorescence != "none":
            for _ in range(int(rng.integers(1, 4))):
                g.stem(
                    (0.0, 0.0), up + rng.normal(0, 0.25), h * rng.uniform(0.6, 1.0), 0.006 * h, 0.03, 0, leaf
                )
    return g.plant
