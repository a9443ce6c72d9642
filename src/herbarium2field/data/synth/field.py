"""Field photo renderer: a living plant in the wild.

What makes it a photo (and the domain gap a model must cross): green, shaded, foreshortened leaves and
vivid flowers; a defocused cluttered background (foliage, grass, soil and litter, sky, bokeh); varied
exposure and colour temperature, dappled light, blur, noise, vignetting; close-ups that crop the plant
and foreground leaves that hide part of it. Landscape or square.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from herbarium2field.data.synth.draw import (
    Palette,
    affine,
    bounds,
    hsv,
    mix,
    plant_shapes,
    rasterise,
    vary_hsv,
)
from herbarium2field.data.synth.morphology import Species
from herbarium2field.data.synth.plant import grow
from herbarium2field.data.synth.texture import (
    add_grain,
    colour_matrix,
    field_shape,
    multiply,
    smooth_noise,
    vignette,
)

SUPERSAMPLE = 2
_ASPECTS = (4 / 3, 3 / 2, 1.0)
SCENES = ("foliage", "grass", "soil", "sky", "forest")


def living_palette(sp: Species, rng: np.random.Generator) -> Palette:
    """Colours of the living plant: the species' green and flower colour, varied per photo."""
    h, s, v = vary_hsv(sp.green_hsv, rng, (0.85, 1.15))
    leaf = hsv(h, s, v)
    fh, fs, fv = sp.flower_hsv
    return Palette(
        leaf=leaf,
        underside=hsv(h, s * 0.6, v * 1.3),
        vein=mix(leaf, (225, 240, 200), 0.6),
        stem=hsv(h - 0.04, s * 0.8, v * 0.85),
        petal=hsv(fh, fs * rng.uniform(0.9, 1.05), fv),
        centre=hsv(*sp.centre_hsv),
        fruit=hsv(*sp.fruit_hsv),
        outline=None,
        leaf_jitter=0.08,
        shade=0.35,
        light=float(rng.uniform(0, 2 * np.pi)),
        half_shade=0.12,
    )


def _blob(cx: float, cy: float, length: float, width: float, angle: float) -> list[float]:
    """A generic pointed leaf (background clutter), as a flat xy list."""
    t = np.linspace(0, 1, 12)
    w = 0.5 * width * np.sin(np.pi * t) ** 0.8
    pts = np.concatenate([np.stack([t, w], 1), np.stack([t[::-1], -w[::-1]], 1)]) * length
    c, s = np.cos(angle), np.sin(angle)
    return (pts @ np.array([[c, s], [-s, c]]) + [cx, cy]).ravel().tolist()


def _background(scene: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A low-resolution scene (``w`` x ``h``), defocused: the plant will be drawn sharp on top of it."""
    hue = rng.uniform(0.18, 0.36)
    if scene == "soil":
        top, bottom = hsv(rng.uniform(0.05, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.45)), None
    elif scene == "sky":
        top = hsv(rng.uniform(0.55, 0.62), rng.uniform(0.1, 0.45), rng.uniform(0.75, 0.97))
        bottom = hsv(hue, rng.uniform(0.4, 0.7), rng.uniform(0.15, 0.35))
    elif scene == "grass":
        top, bottom = hsv(hue, rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.6)), None
    elif scene == "forest":
        top, bottom = hsv(hue, rng.uniform(0.4, 0.8), rng.uniform(0.06, 0.18)), None
    else:
        top, bottom = hsv(hue, rng.uniform(0.4, 0.8), rng.uniform(0.15, 0.4)), None
    a = np.empty((h, w, 3), np.float32)
    a[:] = np.asarray(top, np.float32)
    if bottom is not None:  # horizon: sky above, vegetation below
        horizon = rng.uniform(0.25, 0.6) * h + 0.08 * h * smooth_noise(rng, 1, w, 6)[0]
        below = (np.arange(h)[:, None] > horizon[None, :]).astype(np.float32)[:, :, None]
        a = a * (1 - below) + np.asarray(bottom, np.float32) * below
    a *= (1 + 0.35 * smooth_noise(rng, h, w, 4))[:, :, None]
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img, "RGBA")
    short = min(w, h)
    if scene in ("foliage", "forest", "sky"):  # other plants' leaves at several depths
        for _ in range(int(rng.integers(15, 40))):
            c = hsv(hue + rng.uniform(-0.06, 0.06), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.6))
            y0 = rng.uniform(0.3 if scene == "sky" else 0, 1) * h
            d.polygon(
                _blob(
                    rng.uniform(0, w),
                    y0,
                    rng.uniform(0.1, 0.45) * short,
                    rng.uniform(0.2, 0.6),
                    rng.uniform(0, 2 * np.pi),
                ),
                fill=c,
            )
    if scene in ("grass", "foliage"):  # grass blades
        for _ in range(int(rng.integers(30, 80))):
            x0 = rng.uniform(0, w)
            top_y = rng.uniform(0, h * 0.8)
            lean = rng.normal(0, 0.15) * h
            c = hsv(hue + rng.uniform(-0.08, 0.04), rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.75))
            d.line(
                [(x0, h), (x0 + lean * 0.5, (h + top_y) / 2), (x0 + lean, top_y)],
                fill=c,
                width=int(rng.integers(1, 3)),
            )
    if scene == "soil":  # pebbles and dead leaves
        for _ in range(int(rng.integers(20, 60))):
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.005, 0.03) * short
            g = int(rng.integers(70, 170))
            d.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=(g, int(g * 0.92), int(g * 0.8)))
        for _ in range(int(rng.integers(5, 15))):
            c = hsv(rng.uniform(0.04, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.55))
            d.polygon(
                _blob(
                    rng.uniform(0, w),
                    rng.uniform(0, h),
                    rng.uniform(0.08, 0.2) * short,
                    rng.uniform(0.3, 0.6),
                    rng.uniform(0, 2 * np.pi),
                ),
                fill=c,
            )
    if scene in ("forest", "foliage", "sky") and rng.random() < 0.6:  # bokeh: out-of-focus highlights
        for _ in range(int(rng.integers(5, 25))):
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.02, 0.07) * short
            d.ellipse([x - r, y - r, x + r, y + r], fill=(235, 245, 210, int(rng.integers(60, 160))))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.5)))
    dim = rng.uniform(0.55, 0.95)  # the subject is usually the brightest, sharpest thing in the frame
    return img.point([int(i * dim) for i in range(256)] * 3)


def _occluder(w: int, h: int, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int]]:
    """A blurred foreground leaf or grass tuft across an edge: its mask and colour."""
    mask = Image.new("L", (w // 2, h // 2), 0)
    d = ImageDraw.Draw(mask)
    mw, mh = mask.size
    left = rng.random() < 0.5
    corner_x, corner_y = (-0.15 if left else 1.15) * mw, rng.uniform(0.4, 1.1) * mh
    angle = np.arctan2(mh / 2 - corner_y, mw / 2 - corner_x) + rng.normal(0, 0.25)
    d.polygon(
        _blob(corner_x, corner_y, rng.uniform(0.5, 0.8) * min(mw, mh), rng.uniform(0.25, 0.45), angle),
        fill=int(rng.integers(200, 256)),
    )
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0))).resize((w, h), Image.BILINEAR)
    return mask, hsv(rng.uniform(0.2, 0.33), rng.uniform(0.45, 0.8), rng.uniform(0.2, 0.5))


def render_field(sp: Species, rng: np.random.Generator, size: int) -> Image.Image:
    """One field photo of ``sp``; ``size`` px on the short side."""
    ss = SUPERSAMPLE
    aspect = _ASPECTS[rng.choice(3, p=[0.5, 0.2, 0.3])]
    width, height = int(round(size * aspect)), size
    W, H = width * ss, height * ss
    scene = SCENES[rng.choice(len(SCENES), p=[0.3, 0.2, 0.2, 0.15, 0.15])]
    img = _background(scene, width // 2, height // 2, rng).resize((W, H), Image.BILINEAR)

    plant = grow(sp, rng, pressed=False)
    shapes = plant_shapes(plant, sp, living_palette(sp, rng), rng)
    x0, y0, x1, y1 = bounds(shapes)
    fit = min(W / (x1 - x0), H / (y1 - y0))
    if rng.random() < 0.55 and (plant.leaves or plant.flowers):  # close-up on a flower or a leaf
        # (centre, size) of what the photographer aimed at; the zoom makes it a good part of the frame.
        leaves = [
            (
                (
                    lf.anchor[0] + np.cos(lf.angle) * (lf.petiole + lf.size / 2),
                    lf.anchor[1] + np.sin(lf.angle) * (lf.petiole + lf.size / 2),
                ),
                lf.size * rng.uniform(0.8, 1.6),
            )
            for lf in plant.leaves
        ]
        flowers = [(f.centre, f.size * rng.uniform(4.0, 10.0)) for f in plant.flowers if f.kind != "bud"]
        targets = (flowers if flowers and (rng.random() < 0.5 or not leaves) else leaves) or [
            ((0.0, 0.5), 0.5)
        ]
        focus, extent = targets[rng.integers(len(targets))]
        zoom = float(np.clip(H / extent, fit * 1.2, fit * 8))
        angle = rng.uniform(-0.8, 0.8)
        m = affine(zoom, angle, focus, (W * rng.uniform(0.35, 0.65), H * rng.uniform(0.35, 0.65)))
    else:
        zoom = fit * rng.uniform(0.8, 1.0)
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        m = affine(zoom, rng.normal(0, 0.2), centre, (W * rng.uniform(0.4, 0.6), H * rng.uniform(0.45, 0.6)))
    rasterise(ImageDraw.Draw(img), shapes, m)
    photo = img.reduce(ss)
    if rng.random() < 0.3:
        mask, colour = _occluder(width, height, rng)
        photo = Image.composite(Image.new("RGB", photo.size, colour), photo, mask)
    if rng.random() < 0.3:  # missed focus or camera shake
        photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.3)))
    return _expose(photo, rng)


def _expose(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Exposure, white balance, saturation, contrast, dappled light, vignetting, then sensor noise."""
    h, w = field_shape(photo)
    light = None
    if rng.random() < 0.4:  # sun flecks through a canopy
        light = 1.0 + 0.25 * smooth_noise(rng, h, w, 3)
    if rng.random() < 0.5:
        light = vignette(h, w, rng.uniform(0.15, 0.4)) * (1.0 if light is None else light)
    peak = 1.0 if light is None else float(light.max())
    temperature = rng.uniform(-0.12, 0.12)
    gain = rng.uniform(0.75, 1.3) * peak * np.array([1 + temperature, 1.0, 1 - temperature])
    saturation, contrast = rng.uniform(0.8, 1.25), rng.uniform(0.85, 1.2)
    # One colour matrix for gain, white balance, saturation (about the grey) and contrast (about 128).
    sat = saturation * np.eye(3) + (1 - saturation) / 3
    photo = colour_matrix(photo, (np.diag(gain) @ sat * contrast).T, 128 * (1 - contrast))
    if light is not None:
        photo = multiply(photo, light / peak)
    return add_grain(photo, rng, rng.uniform(1.5, 5.0))
