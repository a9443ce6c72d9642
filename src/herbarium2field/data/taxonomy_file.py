"""The optional taxonomy file of a dataset: which family each genus belongs to.

Genus comes from the species name itself; family does not, so a dataset may carry ``list/taxonomy.csv``
(or ``taxonomy.csv`` at its root) with a header and one row per genus or per species::

    genus,family                        species,family
    Euphorbia,Euphorbiaceae             Euphorbia hirta L.,Euphorbiaceae

Training records the mapping in the run (``model_card.json``, ``families``), so answers and bundles name
the family without the dataset.
"""

from __future__ import annotations

import csv
from pathlib import Path

from herbarium2field.errors import H2FError
from herbarium2field.scoring.taxonomy import genus_of

TAXONOMY_FILES = ("list/taxonomy.csv", "taxonomy.csv")


def find_taxonomy(root: str | Path) -> Path | None:
    """The dataset's taxonomy file, if it has one."""
    for name in TAXONOMY_FILES:
        if (p := Path(root) / name).is_file():
            return p
    return None


def read_families(path: str | Path) -> dict[str, str]:
    """``{genus: family}`` from a taxonomy CSV; a genus given two families is an error naming both lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise H2FError(f"cannot read the taxonomy file ({exc})", path=path) from None
    rows = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(rows, [])]
    key = "genus" if "genus" in header else "species" if "species" in header else None
    if key is None or "family" not in header:
        raise H2FError("a taxonomy file needs a header with 'family' and 'genus' (or 'species')", path=path, line=1,
                       hint="e.g. 'genus,family' then 'Euphorbia,Euphorbiaceae'")
    ki, fi = header.index(key), header.index("family")
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(ki, fi):
            raise H2FError(f"expected {len(header)} columns, found {len(row)}", path=path, line=line)
        name, family = row[ki].strip(), row[fi].strip()
        genus = genus_of(name) if key == "species" else name
        if not genus or not family:
            raise H2FError(f"empty {key} or family", path=path, line=line)
        if out.get(genus, family) != family:
            raise H2FError(f"genus {genus} is in {out[genus]} on line {first[genus]} and in {family} here",
                           path=path, line=line)
        out[genus] = family
        first.setdefault(genus, line)
    return out


def dataset_families(root: str | Path) -> dict[str, str]:
    """The families of a dataset's genera, empty when it has no taxonomy file."""
    path = find_taxonomy(root)
    return read_families(path) if path else {}
