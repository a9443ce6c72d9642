"""Plausible (invented) Latin binomials with an author citation, for the synthetic species list.

Names look like PlantCLEF's ``species_list.txt`` entries ("Costus arabicus L.") so that every tool that
reads or shows names is exercised; the epithet echoes a real trait of the species, as botanists do.
"""

from __future__ import annotations

import numpy as np

_GENUS_START = [
    "Cal",
    "Myr",
    "Phyl",
    "Dendr",
    "Lept",
    "Pter",
    "Chlor",
    "Xanth",
    "Erio",
    "Stach",
    "Hypo",
    "Melan",
    "Rhod",
    "Sclero",
    "Tricho",
    "Pseud",
    "Acro",
    "Brachy",
    "Cory",
    "Dios",
    "Gymn",
    "Helio",
    "Lasi",
    "Oxy",
    "Poly",
    "Sten",
    "Thyr",
    "Zyg",
    "Neo",
    "Campy",
    "Micro",
    "Macro",
]
_GENUS_MIDDLE = ["", "", "", "an", "id", "op", "er", "ol"]
_VOWELS = "aeiouy"
# (ending, grammatical gender): the epithet below agrees with it.
_GENUS_END = [
    ("anthus", "m"),
    ("ia", "f"),
    ("ella", "f"),
    ("phyllum", "n"),
    ("carpus", "m"),
    ("stemon", "m"),
    ("odendron", "n"),
    ("ea", "f"),
    ("opsis", "f"),
    ("ium", "n"),
    ("aria", "f"),
    ("ochloa", "f"),
]
_ADJ_ENDING = {"m": "us", "f": "a", "n": "um"}
_FOLIUS = {"m": "folius", "f": "folia", "n": "folium"}
_FLORUS = {"m": "florus", "f": "flora", "n": "florum"}
_THIRD = {"m": "is", "f": "is", "n": "e"}

# Epithet stems chosen by trait; the ending is added for the genus' gender.
LEAF_EPITHET = {
    "ovate": ("ovat", _ADJ_ENDING),
    "lanceolate": ("lanceolat", _ADJ_ENDING),
    "elliptic": ("elliptic", _ADJ_ENDING),
    "obovate": ("obovat", _ADJ_ENDING),
    "cordate": ("cordi", _FOLIUS),
    "linear": ("angusti", _FOLIUS),
    "orbicular": ("rotundi", _FOLIUS),
    "pinnatifid": ("pinnatifid", _ADJ_ENDING),
    "palmate_lobed": ("palmat", _ADJ_ENDING),
    "pinnate": ("pinnat", _ADJ_ENDING),
    "digitate": ("digitat", _ADJ_ENDING),
    "trifoliate": ("trifoliat", _ADJ_ENDING),
    "sagittate": ("sagittat", _ADJ_ENDING),
}
_OTHER_STEMS = [
    ("sylvestr", _THIRD),
    ("campestr", _THIRD),
    ("montan", _ADJ_ENDING),
    ("grac", _THIRD),
    ("parvi", _FLORUS),
    ("grandi", _FLORUS),
    ("multi", _FLORUS),
    ("ripari", _THIRD),
    ("glabr", _ADJ_ENDING),
    ("hirsut", _ADJ_ENDING),
    ("elat", _ADJ_ENDING),
    ("occidental", _THIRD),
]
_AUTHORS = [
    "L.",
    "Mill.",
    "DC.",
    "Benth.",
    "Hook.f.",
    "Willd.",
    "Lam.",
    "Kunth",
    "Aubl.",
    "Poir.",
    "Sw.",
    "Roxb.",
    "Vahl",
    "Spreng.",
    "Pers.",
    "Jacq.",
    "Standl.",
    "Urb.",
    "Britton",
    "Ruiz & Pav.",
]


def _epithet(stem: str, endings: dict[str, str], gender: str) -> str:
    ending = endings[gender]
    if endings is _THIRD and stem == "grac":
        return "gracil" + ending
    return stem + ending


def _join(stem: str, ending: str) -> str:
    """Join two name parts with one linking vowel, as Greek-Latin compounds do ("Dendr" + "carpus")."""
    if stem[-1] in _VOWELS and ending[0] in _VOWELS:
        return stem[:-1] + ending
    if stem[-1] not in _VOWELS and ending[0] not in _VOWELS:
        return stem + "o" + ending
    return stem + ending


def scientific_name(rng: np.random.Generator, leaf_shape: str) -> str:
    """An invented binomial + authority, e.g. ``Phyloanthus cordifolius (L.) Kunth``.

    Half of the epithets name the leaf shape, the rest a habitat or habit, so names hint at traits
    without giving the shape away for every species.
    """
    end, gender = _GENUS_END[rng.integers(len(_GENUS_END))]
    start, middle = (
        _GENUS_START[rng.integers(len(_GENUS_START))],
        _GENUS_MIDDLE[rng.integers(len(_GENUS_MIDDLE))],
    )
    genus = _join(_join(start, middle) if middle else start, end)
    if rng.random() < 0.5:
        stem, endings = LEAF_EPITHET[leaf_shape]
    else:
        stem, endings = _OTHER_STEMS[rng.integers(len(_OTHER_STEMS))]
    epithet = _epithet(stem, endings, gender)
    author = _AUTHORS[rng.integers(len(_AUTHORS))]
    if rng.random() < 0.3:  # a combination: "(Basionym author) Combining author"
        author = f"({_AUTHORS[rng.integers(len(_AUTHORS))]}) {author}"
    return f"{genus.capitalize()} {epithet} {author}"


def in_genus(name: str, genus: str) -> str:
    """``name`` moved into ``genus``: the genus replaced and the epithet made to agree with its gender
    ("Dendropia grandiflorum" -> "Dendropia grandiflora")."""
    parts = name.split()
    gender = next((g for end, g in _GENUS_END if genus.lower().endswith(end)), None)
    epithet = parts[1] if len(parts) > 1 else ""
    if gender is not None:
        for table in (_FOLIUS, _FLORUS, _ADJ_ENDING, _THIRD):  # longest endings first
            ending = next((e for e in table.values() if epithet.endswith(e)), None)
            if ending is not None:
                epithet = epithet[: len(epithet) - len(ending)] + table[gender]
                break
    return " ".join([genus, epithet, *parts[2:]]) if epithet else genus
