"""Leaf geometry: blade outlines (with margin teeth) and veins, in the leaf's own coordinates.

The blade's base (where the petiole joins) is at the origin and its tip at about ``(1, 0)``; the caller
places, bends and foreshortens it. Simple outlines come from a width profile along the midrib,
rounded/lobed ones from a polar radius, compound leaves are made of simple leaflets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from herbarium2field.data.synth.morphology import Species

_PROFILE_SHAPES = ("ovate", "lanceolate", "elliptic", "obovate", "linear", "pinnatifid")
_TOOTH_AMPLITUDE = {"entire": 0.0, "serrate": 0.022, "dentate": 0.026, "crenate": 0.016}


@dataclass
class LeafGeometry:
    """Closed blade outlines (several for compound leaves) and veins ranked 0 (midrib/rachis) or 1.

    ``halves`` are the blades' halves on one side of their midribs, which living leaves show in another
    shade (light falls on a leaf folded along its midrib).
    """

    blades: list[np.ndarray] = field(default_factory=list)
    veins: list[tuple[np.ndarray, int]] = field(default_factory=list)
    halves: list[np.ndarray] = field(default_factory=list)


def _half(outline: np.ndarray) -> np.ndarray:
    """The part of a blade on the +y side of its midrib (the x axis)."""
    return np.stack([outline[:, 0], np.maximum(outline[:, 1], 0.0)], axis=1)


def half_width(t: np.ndarray, width: float, widest_at: float, bluntness: float) -> np.ndarray:
    """Half-width of a blade along its midrib (``t`` in 0..1): a sine bump peaking at ``widest_at``."""
    a = np.log(0.5) / np.log(np.clip(widest_at, 0.05, 0.95))
    return 0.5 * width * np.sin(np.pi * np.clip(t, 0.0, 1.0) ** a) ** bluntness


def _profile_outline(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    upper = np.stack([t, w], axis=1)
    lower = np.stack([t[::-1], -w[::-1]], axis=1)
    return np.concatenate([upper, lower[1:-1]])


def _polar_outline(
    shape: str, width: float, lobes: int, depth: float, n: int
) -> tuple[np.ndarray, list[float]]:
    """Round, heart-shaped or palmately lobed blade; returns outline and the vein angles (lobe tips)."""
    phi = np.linspace(-np.pi, np.pi, 2 * n, endpoint=False)
    notch = np.exp(-(((np.abs(phi) - np.pi) / 0.32) ** 2))
    if shape == "palmate_lobed":
        spread = 0.72 * np.pi if lobes > 3 else 0.45 * np.pi
        centres = np.linspace(-spread, spread, lobes)
        sigma = spread / max(lobes - 1, 1) * (0.28 + 0.35 * (1 - depth))
        length = 1.0 - 0.3 * (np.abs(centres) / spread) ** 1.5
        bumps = length[None, :] * np.exp(-(((phi[:, None] - centres[None, :]) / sigma) ** 2))
        floor = 0.25 + 0.45 * (1 - depth)
        r = floor + (1 - floor) * bumps.max(axis=1)
        r = r * (1 - 0.5 * notch)
        vein_angles = centres.tolist()
    else:
        tip = 0.28 if shape == "cordate" else 0.06
        r = 1 + tip * np.exp(-((phi / 0.35) ** 2)) - (0.42 if shape == "cordate" else 0.15) * notch
        vein_angles = [-1.2, -0.6, 0.0, 0.6, 1.2]
    pts = np.stack([r * np.cos(phi), r * np.sin(phi) * width], axis=1)
    base = -r[0]  # phi = -pi: the notch where the petiole joins
    pts[:, 0] -= base
    scale = 1.0 / pts[:, 0].max()
    return pts * scale, [a for a in vein_angles]


def _sagittate_outline(width: float, n: int) -> np.ndarray:
    key = np.array(
        [
            [0.0, 0.0],
            [0.02, 0.06],
            [-0.3, 0.55],
            [-0.18, 0.62],
            [0.1, 0.5],
            [0.4, 0.36],
            [0.75, 0.16],
            [1.0, 0.0],
        ]
    )
    key[:, 1] *= width
    upper = _resample(key, n)
    lower = upper[::-1].copy()
    lower[:, 1] *= -1
    return np.concatenate([upper, lower[1:-1]])


def _resample(poly: np.ndarray, n: int, closed: bool = False) -> np.ndarray:
    pts = np.concatenate([poly, poly[:1]]) if closed else poly
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    target = np.linspace(0.0, s[-1], n, endpoint=not closed)
    return np.stack([np.interp(target, s, pts[:, 0]), np.interp(target, s, pts[:, 1])], axis=1)


def apply_margin(outline: np.ndarray, margin: str, teeth: int, amplitude_scale: float = 1.0) -> np.ndarray:
    """Offset a closed outline (starting at the base) along its normals to cut serrate/dentate/crenate teeth."""
    amp = _TOOTH_AMPLITUDE[margin] * amplitude_scale
    if amp == 0.0 or teeth <= 0:
        return outline
    pts = _resample(outline, max(len(outline), teeth * 12), closed=True)
    if _signed_area(pts) > 0:  # make it clockwise so that the left normal points outwards
        pts = np.concatenate([pts[:1], pts[:0:-1]])
    tangent = np.roll(pts, -1, axis=0) - np.roll(pts, 1, axis=0)
    tangent /= np.maximum(np.hypot(*tangent.T), 1e-9)[:, None]
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    s = np.linspace(0.0, 1.0, len(pts), endpoint=False)
    u = s * 2 * teeth
    frac = u - np.floor(u)
    if margin == "serrate":  # teeth point to the tip: gentle basal slope, steep apical edge
        profile = np.where(s < 0.5, frac, 1.0 - frac)
    elif margin == "dentate":
        profile = 1.0 - np.abs(2 * frac - 1)
    else:  # crenate: rounded scallops
        profile = np.sqrt(np.abs(np.sin(np.pi * u)))
    envelope = np.clip(np.minimum(s, 1 - s) * 10 - 0.4, 0, 1) * np.clip((0.5 - np.abs(s - 0.5)) * 14, 0, 1)
    return pts + normal * (amp * profile * envelope)[:, None]


def _signed_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _pinnate_veins(
    t_w: tuple[np.ndarray, np.ndarray], pairs: int, tips: list[float] | None = None
) -> list[tuple[np.ndarray, int]]:
    t, w = t_w
    veins: list[tuple[np.ndarray, int]] = [(np.array([[0.0, 0.0], [0.96, 0.0]]), 0)]
    starts = np.linspace(0.1, 0.78, pairs) if tips is None else np.asarray(tips) - 0.08
    for t0 in starts:
        reach = float(np.interp(t0, t, w))
        t1 = t0 + min(0.18, 1.3 * reach) if tips is None else t0 + 0.08
        y1 = 0.85 * float(np.interp(t1, t, w))
        for sign in (1.0, -1.0):
            veins.append((np.array([[t0, 0.0], [t1, sign * y1]]), 1))
    return veins


def simple_blade(
    shape: str,
    width: float,
    widest_at: float,
    bluntness: float,
    *,
    margin: str = "entire",
    teeth: int = 0,
    lobes: int = 0,
    depth: float = 0.5,
    venation: str = "pinnate",
    n: int = 40,
    tooth_scale: float = 1.0,
) -> LeafGeometry:
    """One blade of the given outline with its margin and veins."""
    if shape in _PROFILE_SHAPES:
        t = np.linspace(0.0, 1.0, n)
        w = half_width(t, width, widest_at, bluntness if shape != "linear" else 0.25)
        tips = None
        if shape == "pinnatifid" and lobes > 0:
            w = w * (1 - depth * (0.5 + 0.5 * np.cos(2 * np.pi * lobes * t)) ** 2)
            tips = [(k + 0.5) / lobes for k in range(lobes)]
        outline = apply_margin(_profile_outline(t, w), margin, teeth, tooth_scale)
        if venation == "parallel":
            veins = [(np.array([[0.0, 0.0], [0.97, 0.0]]), 0)]
            for f in (-0.6, -0.3, 0.3, 0.6):
                veins.append((np.stack([t[1:-1], f * w[1:-1]], axis=1), 1))
        else:
            veins = _pinnate_veins((t, w), max(3, min(8, int(1.5 / max(width, 0.1)))), tips)
        return LeafGeometry([outline], veins, [_half(outline)])
    if shape == "sagittate":
        outline = _sagittate_outline(width, n)
        veins = [
            (np.array([[0.0, 0.0], [0.95, 0.0]]), 0),
            (np.array([[0.0, 0.0], [-0.24, 0.5 * width]]), 1),
            (np.array([[0.0, 0.0], [-0.24, -0.5 * width]]), 1),
        ]
        return LeafGeometry([outline], veins, [_half(outline)])
    outline, angles = _polar_outline(shape, width, lobes, depth, n)
    outline = apply_margin(outline, margin, teeth, tooth_scale)
    base = outline[np.argmin(np.abs(outline[:, 1]) + outline[:, 0])]
    centre = np.array([outline[:, 0].min() + 0.5 * np.ptp(outline[:, 0]), 0.0])
    veins = []
    if venation == "palmate" or shape == "palmate_lobed":
        for angle in angles:
            direction = np.array([np.cos(angle), np.sin(angle) * width])
            end = centre + 0.42 * direction * (1.0 if shape != "palmate_lobed" else 1.05)
            veins.append((np.array([base, end]), 0 if angle == 0.0 else 1))
    else:  # pinnate veins: the half-width comes from the upper half of the outline
        upper = outline[outline[:, 1] >= 0]
        upper = upper[np.argsort(upper[:, 0])]
        t = np.linspace(0.0, 1.0, n)
        veins = _pinnate_veins((t, np.interp(t, upper[:, 0], upper[:, 1])), 5)
    return LeafGeometry([outline], veins, [_half(outline)])


def _place(
    geom: LeafGeometry,
    origin: tuple[float, float],
    angle: float,
    scale: float,
    out: LeafGeometry,
    rank_shift: int = 1,
) -> None:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]]) * scale
    o = np.asarray(origin)
    out.blades.extend(b @ rot + o for b in geom.blades)
    out.halves.extend(b @ rot + o for b in geom.halves)
    out.veins.extend((v @ rot + o, min(1, r + rank_shift)) for v, r in geom.veins)


def leaf_geometry(sp: Species, rng: np.random.Generator, n: int = 40) -> LeafGeometry:
    """The blade(s) and veins of one leaf of species ``sp``, with a little individual variation."""
    width = sp.leaf_width * rng.uniform(0.9, 1.1)
    widest = sp.widest_at + rng.uniform(-0.03, 0.03)
    if sp.leaf_shape not in ("pinnate", "digitate", "trifoliate"):
        return simple_blade(
            sp.leaf_shape,
            width,
            widest,
            sp.bluntness,
            margin=sp.margin,
            teeth=sp.teeth,
            lobes=sp.lobes,
            depth=sp.lobe_depth,
            venation=sp.venation,
            n=n,
        )
    leaflet = simple_blade(
        sp.leaflet_shape,
        width,
        widest,
        sp.bluntness,
        margin=sp.margin,
        teeth=max(4, sp.teeth // 2),
        venation="pinnate",
        n=max(16, n // 2),
        tooth_scale=1.6,
    )
    out = LeafGeometry()
    if sp.leaf_shape == "pinnate":
        out.veins.append((np.array([[0.0, 0.0], [0.8, 0.0]]), 0))
        pairs = max(sp.lobes, 1)
        size = 0.5 / (1 + 0.1 * pairs)
        for k, t in enumerate(np.linspace(0.1, 0.72, pairs)):
            grow = 0.8 + 0.3 * k / max(pairs - 1, 1)
            for sign in (1.0, -1.0):
                _place(leaflet, (t, 0.0), sign * np.radians(60 + rng.uniform(-6, 6)), size * grow, out)
        _place(leaflet, (0.8, 0.0), 0.0, size * 1.15, out)
    elif sp.leaf_shape == "digitate":
        spread = 0.45 * np.pi
        for angle in np.linspace(-spread, spread, sp.lobes):
            length = 1.0 - 0.4 * (abs(angle) / spread) ** 1.5
            _place(leaflet, (0.0, 0.0), angle + rng.uniform(-0.06, 0.06), 0.62 * length, out)
    else:  # trifoliate: a short rachis, a terminal and two lateral leaflets
        out.veins.append((np.array([[0.0, 0.0], [0.18, 0.0]]), 0))
        _place(leaflet, (0.18, 0.0), 0.0, 0.72, out)
        for sign in (1.0, -1.0):
            _place(leaflet, (0.12, 0.0), sign * np.radians(62 + rng.uniform(-8, 8)), 0.55, out)
    return out
