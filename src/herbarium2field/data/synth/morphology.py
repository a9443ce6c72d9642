"""Species traits of the synthetic flora, sampled from the seed.

A :class:`Species` is everything that is constant within a species (leaf outline, margin, venation,
arrangement, habit, inflorescence, colours); individuals vary around it (see :mod:`.plant`). Species
must differ in *shape*, because the herbarium renderer destroys most colour, so leaf outlines are
dealt out evenly (a shuffled deck per block of species) rather than drawn independently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from herbarium2field.data.synth.names import in_genus, scientific_name

LEAF_SHAPES = (
    "ovate",
    "lanceolate",
    "elliptic",
    "obovate",
    "cordate",
    "linear",
    "orbicular",
    "pinnatifid",
    "palmate_lobed",
    "pinnate",
    "digitate",
    "trifoliate",
    "sagittate",
)
COMPOUND = ("pinnate", "digitate", "trifoliate")
MARGINS = ("entire", "serrate", "dentate", "crenate")
HABITS = ("erect", "branched", "rosette", "vine", "tufted")
ARRANGEMENTS = ("alternate", "opposite", "whorled", "basal")
INFLORESCENCES = ("none", "solitary", "cluster", "spike", "umbel", "axillary")
FRUITS = ("none", "berries", "pods")

# Salts that keep the random streams of different jobs apart (never Python's salted ``hash``).
SPECIES_STREAM = 7001
CLASS_ID_STREAM = 7002

# (min, max) width/length ratio of the blade (or of one leaflet for compound leaves).
_WIDTH = {
    "ovate": (0.38, 0.55),
    "lanceolate": (0.13, 0.22),
    "elliptic": (0.28, 0.42),
    "obovate": (0.3, 0.45),
    "cordate": (0.75, 0.95),
    "linear": (0.035, 0.07),
    "orbicular": (0.85, 1.0),
    "pinnatifid": (0.35, 0.5),
    "palmate_lobed": (0.9, 1.1),
    "pinnate": (0.3, 0.45),
    "digitate": (0.2, 0.32),
    "trifoliate": (0.35, 0.55),
    "sagittate": (0.45, 0.65),
}
# Position of the widest point along the blade (0 = base, 1 = tip) for profile-based outlines.
_WIDEST = {
    "ovate": (0.28, 0.38),
    "lanceolate": (0.3, 0.42),
    "elliptic": (0.45, 0.55),
    "obovate": (0.62, 0.72),
    "linear": (0.35, 0.5),
    "pinnatifid": (0.4, 0.55),
    "pinnate": (0.35, 0.5),
    "digitate": (0.55, 0.7),
    "trifoliate": (0.4, 0.55),
}


@dataclass(frozen=True)
class Species:
    """Traits shared by every individual of one synthetic species (lengths relative to plant height)."""

    class_id: int
    name: str
    leaf_shape: str
    margin: str
    venation: str  # pinnate | palmate | parallel
    arrangement: str
    habit: str
    leaf_length: float  # blade length / plant height
    leaf_width: float  # blade (or leaflet) width / length
    widest_at: float  # 0..1 along the blade
    bluntness: float  # < 1 rounded, > 1 tapering (profile exponent)
    lobes: int  # lobes per side (pinnatifid), lobes (palmate), leaflets (compound)
    lobe_depth: float  # 0..1
    leaflet_shape: str  # outline of one leaflet of a compound leaf
    teeth: int  # teeth per side of the blade
    petiole: float  # petiole / blade length
    leaf_angle: float  # degrees between stem and leaf
    nodes: tuple[int, int]  # range of leaf-bearing nodes (or basal leaves)
    stem_curve: float  # lateral sway of the stem
    leaf_droop: float  # bending of blades in living plants
    inflorescence: str
    petals: int
    petal_shape: str  # round | pointed | notched
    flower_size: float  # flower radius / plant height
    flower_hsv: tuple[float, float, float]
    centre_hsv: tuple[float, float, float]
    fruit: str
    fruit_hsv: tuple[float, float, float]
    green_hsv: tuple[float, float, float]  # living leaf colour
    dry_hsv: tuple[float, float, float]  # pressed leaf colour (some species dry black, others olive)


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _pick(
    rng: np.random.Generator, options: tuple[str, ...] | list[str], p: list[float] | None = None
) -> str:
    return str(options[rng.choice(len(options), p=p)])


def leaf_shape_for(seed: int, index: int) -> str:
    """Leaf outline of species ``index``: each block of ``len(LEAF_SHAPES)`` species uses every outline once."""
    block, pos = divmod(index, len(LEAF_SHAPES))
    order = np.random.default_rng([seed, SPECIES_STREAM, 0, block]).permutation(len(LEAF_SHAPES))
    return LEAF_SHAPES[order[pos]]


def _habit(rng: np.random.Generator, shape: str) -> str:
    if shape == "linear":
        return _pick(rng, ["tufted", "erect", "rosette"], [0.6, 0.25, 0.15])
    if shape in ("cordate", "sagittate", "trifoliate"):
        return _pick(rng, ["vine", "erect", "branched", "rosette"], [0.4, 0.25, 0.2, 0.15])
    if shape in ("pinnate", "digitate"):
        return _pick(rng, ["erect", "branched", "vine"], [0.45, 0.4, 0.15])
    return _pick(rng, ["erect", "branched", "rosette", "vine"], [0.35, 0.3, 0.25, 0.1])


def _venation(rng: np.random.Generator, shape: str) -> str:
    if shape == "linear":
        return "parallel"
    if shape in ("palmate_lobed", "digitate"):
        return "palmate"
    if shape in ("cordate", "orbicular"):
        return _pick(rng, ["palmate", "pinnate"])
    if shape in ("lanceolate", "elliptic"):
        return _pick(rng, ["pinnate", "parallel"], [0.75, 0.25])
    return "pinnate"


def sample_species(seed: int, index: int, class_id: int) -> Species:
    """Traits of species number ``index`` of the flora ``seed`` (independent of how many species there are)."""
    rng = np.random.default_rng([seed, SPECIES_STREAM, 1, index])
    shape = leaf_shape_for(seed, index)
    habit = _habit(rng, shape)
    venation = _venation(rng, shape)
    if habit in ("rosette", "tufted"):
        arrangement = "basal"
    elif shape in COMPOUND or habit == "vine":
        arrangement = _pick(rng, ["alternate", "opposite"], [0.65, 0.35])
    else:
        arrangement = _pick(rng, ["alternate", "opposite", "whorled"], [0.5, 0.3, 0.2])
    margin = "entire" if shape in ("linear", "sagittate") else _pick(rng, MARGINS, [0.4, 0.25, 0.2, 0.15])
    if habit == "tufted":
        leaf_length = _u(rng, (0.55, 0.85))
    elif habit == "rosette":
        leaf_length = _u(rng, (0.3, 0.5))
    elif shape in COMPOUND:
        leaf_length = _u(rng, (0.25, 0.4))
    else:
        leaf_length = _u(rng, (0.18, 0.34))
    lobes = {
        "pinnatifid": int(rng.integers(3, 6)),
        "palmate_lobed": int(rng.choice([3, 5, 5, 7])),
        "pinnate": int(rng.choice([3, 4, 5, 6])),
        "digitate": int(rng.choice([5, 5, 7])),
    }.get(shape, 0)
    inflorescence = _pick(rng, INFLORESCENCES, [0.12, 0.25, 0.2, 0.15, 0.13, 0.15])
    if habit == "tufted" and inflorescence != "none":
        inflorescence = "spike"
    fruit = _pick(rng, FRUITS, [0.6, 0.25, 0.15] if inflorescence != "none" else [0.3, 0.4, 0.3])
    flower_hue = float(rng.choice([0.0, 0.08, 0.13, 0.16, 0.6, 0.75, 0.85, 0.92, 0.0]))
    white = rng.random() < 0.2
    flower_hsv = (
        (flower_hue + _u(rng, (-0.02, 0.02))) % 1.0,
        (0.05 if white else _u(rng, (0.55, 0.95))),
        _u(rng, (0.85, 1.0)),
    )
    centre_hsv = (_u(rng, (0.1, 0.16)), _u(rng, (0.7, 1.0)), _u(rng, (0.6, 0.95)))
    fruit_hsv = (float(rng.choice([0.0, 0.02, 0.75, 0.08, 0.3])), _u(rng, (0.6, 0.9)), _u(rng, (0.3, 0.8)))
    green_hsv = (_u(rng, (0.2, 0.36)), _u(rng, (0.45, 0.85)), _u(rng, (0.35, 0.65)))
    dry_hsv = (_u(rng, (0.06, 0.16)), _u(rng, (0.25, 0.6)), _u(rng, (0.18, 0.45)))
    wide = _WIDEST.get(shape, (0.4, 0.6))
    name = scientific_name(rng, shape)
    return Species(
        class_id=class_id,
        name=name,
        leaf_shape=shape,
        margin=margin,
        venation=venation,
        arrangement=arrangement,
        habit=habit,
        leaf_length=leaf_length,
        leaf_width=_u(rng, _WIDTH[shape]),
        widest_at=_u(rng, wide),
        bluntness=_u(rng, (0.45, 1.1)),
        lobes=lobes,
        lobe_depth=_u(rng, (0.3, 0.7)),
        leaflet_shape=_pick(rng, ["elliptic", "ovate", "lanceolate", "obovate"]),
        teeth=int(rng.integers(8, 22)),
        petiole=_u(rng, {"vine": (0.25, 0.5), "rosette": (0.15, 0.45)}.get(habit, (0.0, 0.15))),
        leaf_angle=_u(rng, (30.0, 70.0)),
        nodes=_nodes(rng, habit),
        stem_curve=_u(rng, (0.0, 0.08)),
        leaf_droop=_u(rng, (0.0, 0.35)),
        inflorescence=inflorescence,
        petals=int(rng.choice([3, 4, 5, 5, 5, 6, 8])),
        petal_shape=_pick(rng, ["round", "pointed", "notched"]),
        flower_size=_u(rng, (0.035, 0.07)),
        flower_hsv=flower_hsv,
        centre_hsv=centre_hsv,
        fruit=fruit,
        fruit_hsv=fruit_hsv,
        green_hsv=green_hsv,
        dry_hsv=dry_hsv,
    )


def _nodes(rng: np.random.Generator, habit: str) -> tuple[int, int]:
    lo = {"erect": 4, "branched": 3, "rosette": 5, "vine": 5, "tufted": 7}[habit] + int(rng.integers(0, 3))
    return lo, lo + int(rng.integers(2, 5))


def class_ids(seed: int, n: int) -> list[int]:
    """``n`` distinct PlantCLEF-like class ids (5-6 digits); a prefix of a longer flora's ids."""
    rng = np.random.default_rng([seed, CLASS_ID_STREAM])
    ids: list[int] = []
    seen: set[int] = set()
    while len(ids) < n:
        for value in rng.integers(10_000, 400_000, size=max(n, 16)).tolist():
            if value not in seen and len(ids) < n:
                seen.add(value)
                ids.append(int(value))
    return ids


#: What species of one genus share (the genus's look); leaf size, flowers, colours stay each species' own.
GENUS_TRAITS = ("leaf_shape", "venation", "arrangement", "habit", "inflorescence", "fruit", "petals", "petal_shape",
                "leaflet_shape", "lobes")


def flora(seed: int, n: int, *, genus_size: int = 1) -> list[Species]:
    """The ``n`` species of the flora ``seed``, with distinct class ids and scientific names.

    With ``genus_size > 1`` consecutive species form genera of that size: each takes the genus-level traits
    (:data:`GENUS_TRAITS`) and the genus name of the genus's first species, so congeners look alike and share
    a name, as real genera do; ``genus_size = 1`` gives the original flora, unchanged.
    """
    species: list[Species] = []
    names: set[str] = set()
    for index, class_id in enumerate(class_ids(seed, n)):
        sp = sample_species(seed, index, class_id)
        founder = species[index - index % genus_size] if genus_size > 1 and index % genus_size else None
        if founder is not None:
            genus = founder.name.split()[0]
            sp = Species(**{**sp.__dict__, **{t: getattr(founder, t) for t in GENUS_TRAITS},
                            "name": in_genus(sp.name, genus)})
        retry = 0
        key = _binomial if genus_size > 1 else str  # congeners must differ by more than their authors

        while key(sp.name) in names:  # rare; re-draw only the name (keeping a congener's genus)
            retry += 1
            rng = np.random.default_rng([seed, SPECIES_STREAM, 2, index, retry])
            name = scientific_name(rng, sp.leaf_shape)
            if founder is not None:
                name = in_genus(name, founder.name.split()[0])
            sp = Species(**{**sp.__dict__, "name": name})
        names.add(key(sp.name))
        species.append(sp)
    return species


def _binomial(name: str) -> str:
    return " ".join(name.split()[:2])
