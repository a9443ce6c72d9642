"""``h2f evaluate RUNFILE --data ROOT``: score a PlantCLEF run file (ours or another system's) against a
dataset's ground truth, in the same tables as ``h2f evaluate``.

MRR is the task's: the mean over every ground-truth observation of 1 / (rank of its true species), where the
rank is the file's ``Rank`` order among that observation's predictions, and 0 when the true species is not
predicted (or the observation is missing from the file). Top-k counts the true species among the first k.
Groups (with / without pairs) come from the dataset; the genus table sums the file's probabilities per genus.
Observations are matched to test images by their path without extension (``test/1234``) or file name
(``1234``); predictions for observations the ground truth does not know are counted and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from herbarium2field.data.manifest import read_dataset
from herbarium2field.data.runfile import read_run_file
from herbarium2field.errors import H2FError
from herbarium2field.evaluation.evaluate import EvalResult, metrics_markdown
from herbarium2field.io import atomic_write_text, write_json
from herbarium2field.scoring import metrics as M
from herbarium2field.scoring.taxonomy import Taxonomy


@dataclass
class RunFileScore:
    result: EvalResult
    unknown_observations: int  # in the file, not in the ground truth
    missing_observations: int  # in the ground truth, not in the file


def evaluate_run_file(path: str | Path, *, data: str | Path, out: Path | None = None, n_boot: int = 1000,
                      seed: int = 0) -> RunFileScore:
    """Score the run file at ``path`` against the labelled test split of the dataset at ``data``."""
    path = Path(path)
    preds = read_run_file(path)
    ds = read_dataset(data, check="none", allow_missing=True)
    test = ds.split("test")
    test = test[test.class_id.notna()].reset_index(drop=True)
    if test.empty:
        raise H2FError("the dataset has no labelled test images to score against", path=ds.root,
                       hint="it needs list/groundtruth.txt (or labelled test folders)")
    class_ids = ds.class_ids
    index = {c: i for i, c in enumerate(class_ids)}
    keys: dict[str, int] = {}
    for i, p in enumerate(test.path.astype(str)):
        keys.setdefault(str(Path(p).with_suffix("")), i)
        keys.setdefault(Path(p).stem, i)
    n, c = len(test), len(class_ids)
    scores = np.full((n, c), -np.inf)
    probs = np.zeros((n, c))
    found = np.zeros(n, dtype=bool)
    unknown = set()
    for obs, cid, prob, rank in preds.itertuples(index=False):
        row = keys.get(obs)
        if row is None:
            unknown.add(obs)
            continue
        col = index.get(cid)
        if col is None:
            raise H2FError(f"class {cid} (observation {obs}) is not a species of the dataset", path=path,
                           hint="the run file must use the dataset's class ids")
        scores[row, col] = -rank - 1e-9 * (1.0 - prob)  # the file's rank decides; equal ranks by probability
        probs[row, col] = prob
        found[row] = True
    labels = np.array([index[str(x)] for x in test.class_id], dtype=np.int64)
    predicted = np.isfinite(scores[np.arange(n), labels])
    eval_labels = np.where(predicted, labels, -1)  # not predicted: wrong at every k, MRR 0 (the task's rule)
    wp = test.class_id.isin(ds.with_pairs).to_numpy()
    groups = {"with_pairs": wp, "without_pairs": ~wp}
    scores = np.where(np.isfinite(scores), scores, -1e9)
    result = M.evaluate(scores, eval_labels, groups, ks=(1, 3, 5, 10), n_boot=n_boot, seed=seed)
    tax = Taxonomy.from_species([ds.species[x] for x in class_ids])
    g = M.evaluate(tax.genus_probabilities(probs), tax.genus_labels(labels), groups, ks=(1, 5), n_boot=n_boot,
                   seed=seed)
    g["n_genera"] = tax.num_genera
    result.update({"run": path.name, "mode": "run file", "split": "test", "labelled": True, "genus": g,
                   "source": str(path.resolve()), "dataset": str(Path(ds.root).resolve()),
                   "observations_in_file": int(preds.observation.nunique()),
                   "unknown_observations": len(unknown), "missing_observations": int((~found).sum())})
    out = out or path.with_name(path.name + ".eval")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    atomic_write_text(out / "report.md", _report(path, result))
    return RunFileScore(EvalResult(path.name, "run file", "test", out, result), len(unknown), int((~found).sum()))


def _report(path: Path, result: dict[str, Any]) -> str:
    boot = result["bootstrap"]
    return "\n".join([
        f"# {path.name}: PlantCLEF run file scored against {result['dataset']}", "",
        f"{result['groups']['overall']['n']} test observations, {result['n_classes']} species; "
        f"{result['missing_observations']} missing from the file (count as wrong, MRR 0), "
        f"{result['unknown_observations']} in the file but not in the ground truth. Brackets: "
        f"{int(boot['ci'] * 100)} % percentile bootstrap interval ({boot['n_boot']} resamples).", "",
        metrics_markdown(result), ""])
