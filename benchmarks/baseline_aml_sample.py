"""Frozen-feature baselines on the real sample: offline ImageNet EfficientNet-Lite0 features + classic classifiers.

Usage: ``.venv/bin/python benchmarks/baseline_aml_sample.py [--n-boot 1000] [--moved 5] [--seed 0]``

The real sample (``../shared/data/aml-sample``: 100 species, one herbarium sheet each; 89 training field
photos of 15 species; 32 test field photos of 14 of them) is embedded once per extractor variant (caches in
``.cache/features/``, reused on the next run), then:

1. **Classifiers**: logreg, svm, knn, ncm, each with ``--align none | standardize | coral``, trained on the
   100 sheets + 89 training photos, evaluated on the 32 test photos: top-1/top-5 with 95% percentile-bootstrap
   CIs (``herbarium2field.scoring.metrics.evaluate``), overall and per pairs group. On the sample every
   test photo is of a species *with* pairs.
2. **Without pairs, on real plants**: ``--moved`` species (seeded choice among those with test photos) lose
   their training field photos, so they become "without pairs" (sheet only), and the same table is made per
   group.
3. **Which architecture / normalisation for the offline weights** (a TensorFlow port): timm
   ``efficientnet_lite0`` (symmetric padding, BN eps 1e-5) vs ``tf_efficientnet_lite0`` (TF "SAME" padding,
   BN eps 1e-3), each with mean=std=0.5 (the TF inputs in [-1, 1]) and with ImageNet mean/std. Measured by
   the classifiers above and by two larger, label-only probes on all 121 field photos: herbarium-sheet
   retrieval (rank of the photo's own species' sheet among the 100 sheets, cosine) and leave-one-out 1-NN
   among field photos; plus the ImageNet head's confidence on field photos (a correctly wired port is
   confident on natural photos). Differences come with paired-bootstrap 95% CIs.

Writes ``benchmarks/results/baseline_aml_sample.json`` and the Markdown tables into ``docs/baselines.md``
(between the ``baseline-aml-sample`` markers), and prints them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine_info, write_result  # noqa: E402
from herbarium2field.data.cache import ImageSource  # noqa: E402
from herbarium2field.data.manifest import labels_of as table_labels  # noqa: E402
from herbarium2field.data.transforms import eval_transform  # noqa: E402
from herbarium2field.features.classic import fit_classic  # noqa: E402
from herbarium2field.features.extract import embed_dataset  # noqa: E402
from herbarium2field.features.store import Features, load_features  # noqa: E402
from herbarium2field.io import atomic_write_text  # noqa: E402
from herbarium2field.models.align import ALIGNMENTS  # noqa: E402
from herbarium2field.models.classifiers import CLASSIFIERS  # noqa: E402
from herbarium2field.models.frozen import ExtractorSpec  # noqa: E402
from herbarium2field.models.weights import OFFLINE_LITE0, load_into, resolve_weights_path  # noqa: E402
from herbarium2field.paths import project_root, shared_data_dir  # noqa: E402
from herbarium2field.scoring.metrics import evaluate, group_masks, paired_diff, ranks  # noqa: E402

ROOT = project_root()
NAME = "baseline_aml_sample"  # benchmarks/results/<NAME>.json
DOC = ROOT / "docs" / "baselines.md"
START, END = "<!-- baseline-aml-sample:start -->", "<!-- baseline-aml-sample:end -->"
HALF = (0.5, 0.5, 0.5)
PAIRED = ("field_1nn_loo", "logreg", "ncm", "sheet_retrieval", "imagenet_confidence")
DEFAULT = "efficientnet_lite0, mean=std=0.5"
VARIANTS: dict[str, ExtractorSpec] = {
    DEFAULT: ExtractorSpec(
        backbone="efficientnet_lite0", weights=OFFLINE_LITE0, size=224, mean=HALF, std=HALF
    ),
    "efficientnet_lite0, ImageNet mean/std": ExtractorSpec(
        backbone="efficientnet_lite0",
        weights=OFFLINE_LITE0,
        size=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    ),
    "tf_efficientnet_lite0, mean=std=0.5": ExtractorSpec(
        backbone="tf_efficientnet_lite0", weights=OFFLINE_LITE0, size=224, mean=HALF, std=HALF
    ),
    "tf_efficientnet_lite0, ImageNet mean/std": ExtractorSpec(
        backbone="tf_efficientnet_lite0",
        weights=OFFLINE_LITE0,
        size=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    ),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def labels_of(feats: Features, table: Any) -> np.ndarray:
    """Class indices of ``table`` in the order of the feature cache's classes (-1: unlabelled)."""
    return table_labels(table, {c: i for i, c in enumerate(feats.class_ids)})


def fmt(g: dict[str, Any], k: str) -> str:
    if g.get(k) is None:
        return "–"
    lo, hi = g["ci"][k] or (float("nan"), float("nan"))
    return f"{100 * g[k]:.1f} [{100 * lo:.0f}–{100 * hi:.0f}]"


# ---- experiments -------------------------------------------------------------------------------------


def classifier_grid(
    feats: Features,
    n_boot: int,
    seed: int,
    train_mask: np.ndarray | None = None,
    aligns: tuple[str, ...] = ALIGNMENTS,
) -> list[dict[str, Any]]:
    test, x = feats.select(split="test")
    rows = []
    for clf in CLASSIFIERS:
        for align in aligns:
            t0 = time.perf_counter()
            model = fit_classic(feats, clf, align=align, train_mask=train_mask)
            fit_s = time.perf_counter() - t0
            y = labels_of(feats, test)
            scores = model.scores(x, "field")
            groups = group_masks(y, model.card.class_ids, set(model.card.with_pairs))
            res = evaluate(scores, y, groups, ks=(1, 5), n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "classifier": clf,
                    "align": align,
                    "fit_seconds": round(fit_s, 2),
                    "notes": {
                        k: model.card.model[k] for k in ("calibration", "warning") if k in model.card.model
                    },
                    "with_pairs_species": len(model.card.with_pairs),
                    "metrics": res["groups"],
                }
            )
            print(
                f"  {clf:6s} {align:11s} top1 {fmt(res['groups']['overall'], 'top1')}  "
                f"top5 {fmt(res['groups']['overall'], 'top5')}  ({fit_s:.1f} s)",
                flush=True,
            )
    return rows


def moved_species(feats: Features, n: int, seed: int) -> list[str]:
    test_species = set(feats.select(split="test")[0].class_id.astype(str))
    pool = sorted(feats.with_pairs & test_species)
    return sorted(np.random.default_rng(seed).choice(pool, size=min(n, len(pool)), replace=False).tolist())


def retrieval_probes(feats: Features, n_boot: int, seed: int) -> dict[str, Any]:
    """Label-only probes on all field photos (train + test): sheet retrieval and field 1-NN."""
    t = feats.table
    field = (t.domain == "field").to_numpy()
    herb = ((t.domain == "herbarium") & (t.split == "train")).to_numpy()
    xf, xh = feats.embeddings[field], feats.embeddings[herb]
    yf = labels_of(feats, t[field])
    yh = labels_of(feats, t[herb])
    n_cls = len(feats.class_ids)
    sims = xf @ xh.T
    sheet_scores = np.full((len(xf), n_cls), -np.inf)
    for c in np.unique(yh):  # best sheet of each species
        sheet_scores[:, c] = sims[:, yh == c].max(axis=1)
    nn = xf @ xf.T
    np.fill_diagonal(nn, -np.inf)
    nn_scores = np.full((len(xf), n_cls), -np.inf)
    for c in np.unique(yf):
        nn_scores[:, c] = nn[:, yf == c].max(axis=1)
    out = {}
    for name, s in (("sheet_retrieval", sheet_scores), ("field_1nn_loo", nn_scores)):
        out[name] = evaluate(s, yf, ks=(1, 5), n_boot=n_boot, seed=seed)["groups"]["overall"]
        out[name]["hits_top1"] = (ranks(s, yf) <= 1).astype(int).tolist()
    return out


@torch.inference_mode()
def imagenet_confidence(data: Path, feats: Features, spec: ExtractorSpec) -> dict[str, float]:
    """Mean max-probability and entropy of the ported 1000-class ImageNet head on the field photos."""
    net = timm.create_model(str(spec.backbone), num_classes=1000).eval()
    load_into(net, resolve_weights_path(OFFLINE_LITE0))
    from herbarium2field.data.transforms import Preprocessing

    pre = Preprocessing.from_dict(feats.meta["spec"]["preprocessing"])
    tf = eval_transform(pre)
    src = ImageSource(data, size=320)
    paths = feats.table.path[(feats.table.domain == "field").to_numpy()].tolist()
    probs = []
    for i in range(0, len(paths), 32):
        x = torch.stack([tf(src.load(p)) for p in paths[i : i + 32]])
        probs.append(torch.softmax(net(x), dim=1).numpy())
    p = np.concatenate(probs)
    ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(1)
    return {
        "mean_max_prob": round(float(p.max(1).mean()), 4),
        "mean_entropy_nats": round(float(ent.mean()), 3),
        "top1_class": p.argmax(1).tolist(),
        "max_prob": p.max(1).round(5).tolist(),
    }


# ---- reporting ---------------------------------------------------------------------------------------


def grid_table(rows: list[dict[str, Any]], groups: tuple[str, ...]) -> str:
    head = (
        "| classifier | align | "
        + " | ".join(f"{g.replace('_', ' ')} top-1 | {g.replace('_', ' ')} top-5" for g in groups)
        + " |"
    )
    lines = [head, "|" + "---|" * (2 + 2 * len(groups))]
    for r in rows:
        cells = []
        for g in groups:
            m = r["metrics"][g]
            cells += [fmt(m, "top1"), fmt(m, "top5")]
        lines.append(f"| {r['classifier']} | {r['align']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(res: dict[str, Any]) -> str:
    m1 = res["classifiers"]
    n_test = m1[0]["metrics"]["overall"]["n"]
    moved = res["without_pairs_variant"]
    g = moved["rows"][0]["metrics"]
    arch = res["architecture"]
    out = [
        f"Measured by `benchmarks/baseline_aml_sample.py` on {res['date'][:10]} ({res['machine']['cpu']}, "
        f"{res['machine']['cores']} cores). Percent, with 95% bootstrap CIs ({res['n_boot']} resamples of the "
        f"test photos). The sample is tiny ({n_test} test photos), so the intervals are wide: read differences "
        "smaller than ~15 points as noise.",
        "",
        f"**1. Classifiers on offline ImageNet EfficientNet-Lite0 features** (`{DEFAULT}`, 224 px; trained on "
        "100 sheets + 89 field photos, tested on the 32 test photos, all of species with pairs):",
        "",
        grid_table(m1, ("overall",)),
        "",
        f"**2. Species without pairs, on real plants**: the training field photos of {len(moved['moved'])} "
        f"species ({', '.join(moved['moved_species'])}) are dropped, so their {g['without_pairs']['n']} test "
        f"photos are of species known from one herbarium sheet only ({g['with_pairs']['n']} test photos stay "
        "with pairs):",
        "",
        grid_table(moved["rows"], ("with_pairs", "without_pairs")),
        "",
        "**3. Which architecture and normalisation for the offline weights file** (a TensorFlow port). "
        "Classifier top-1 on the 32 test photos (align none); sheet retrieval = each of the 121 field photos "
        "ranks the 100 herbarium sheets by cosine similarity (top-1/top-5 of its own species' sheet); field 1-NN "
        "= leave-one-out nearest field photo (15 species); ImageNet confidence = mean max-probability of the "
        "ported 1000-class head on the field photos (a port wired like the original is more confident). Chance "
        "for sheet retrieval: 1% top-1, 5% top-5.",
        "",
        "| variant | logreg | svm | knn | ncm | sheet retrieval top-1 | sheet retrieval top-5 | field 1-NN top-1 "
        "| ImageNet confidence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in arch["variants"].items():
        top1 = {
            r["classifier"]: fmt(r["metrics"]["overall"], "top1")
            for r in v["classifiers"]
            if r["align"] == "none"
        }
        p = v["probes"]
        out.append(
            f"| {name} | {top1['logreg']} | {top1['svm']} | {top1['knn']} | {top1['ncm']} | "
            f"{fmt(p['sheet_retrieval'], 'top1')} | {fmt(p['sheet_retrieval'], 'top5')} | "
            f"{fmt(p['field_1nn_loo'], 'top1')} | {v['imagenet']['mean_max_prob']:.3f} |"
        )
    out += [
        "",
        "Paired differences against the current default (`" + DEFAULT + "`), points of top-1 "
        "[95% paired-bootstrap CI]:",
        "",
    ]
    out += [
        "| variant | field 1-NN (121 photos) | logreg (32 photos) | ncm (32 photos) | sheet retrieval "
        "(121 photos) | ImageNet confidence (121 photos) |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in arch["paired_vs_default"].items():
        cells = [
            f"{100 * d[k]['diff']:+.1f} [{100 * d[k]['ci'][0]:+.1f}, {100 * d[k]['ci'][1]:+.1f}]"
            for k in PAIRED
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", arch["verdict"]]
    notes = {f"{r['classifier']}: {n}" for r in m1 for n in r["notes"].values()}
    if notes:
        out += ["", "Notes: " + "; ".join(sorted(notes)) + "."]
    return "\n".join(out)


def write_doc(text: str) -> None:
    block = f"{START}\n{text}\n{END}"
    doc = DOC.read_text() if DOC.is_file() else ""
    if START in doc and END in doc:
        doc = doc[: doc.index(START)] + block + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(DOC, doc)


def verdict(arch: dict[str, Any]) -> str:
    """Which variants differ from the default beyond noise (paired 95% CI excluding 0), per measure."""
    better, worse = [], []
    for name, d in arch["paired_vs_default"].items():
        up = [k for k, v in d.items() if v["ci"][0] > 0]
        down = [k for k, v in d.items() if v["ci"][1] < 0]
        if up:
            better.append(f"{name} ({', '.join(up)})")
        if down:
            worse.append(f"{name} ({', '.join(down)})")
    text = (
        "Beyond noise (paired CI excluding 0), better than the default on: " + "; ".join(better) + "."
        if better
        else "No variant is better than the default beyond noise on any measure."
    )
    if worse:
        text += " Worse than the default on: " + "; ".join(worse) + "."
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(shared_data_dir() / "aml-sample"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--moved", type=int, default=5, help="species moved to 'without pairs'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "features"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="re-render docs/baselines.md from the JSON")
    args = ap.parse_args()
    if args.report_only:
        md = markdown(json.loads((RESULTS / f"{NAME}.json").read_text()))
        write_doc(md)
        print(md)
        return
    data = Path(args.data)
    if not (data / "list" / "train.txt").is_file():
        raise SystemExit(f"real sample not found at {data} (set H2F_SHARED_DATA)")
    feats: dict[str, Features] = {}
    for name, spec in VARIANTS.items():
        out = Path(args.cache) / f"aml-sample-{slug(name)}"
        rep = embed_dataset(data, out, spec, batch_size=32, num_workers=args.workers, progress=True)
        print(f"{name}: {rep.embedded} embedded, {rep.reused} reused -> {out}", flush=True)
        feats[name] = load_features(out)
    base = feats[DEFAULT]
    res: dict[str, Any] = {
        "benchmark": "baseline_aml_sample",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),  # torch and timm versions are in its "packages"
        "data": str(data),
        "n_boot": args.n_boot,
        "seed": args.seed,
        "metrics": "herbarium2field.scoring.metrics.evaluate (pessimistic ties, percentile bootstrap)",
        "default_variant": DEFAULT,
    }
    print(f"1. classifiers ({DEFAULT})", flush=True)
    res["classifiers"] = classifier_grid(base, args.n_boot, args.seed)
    moved = moved_species(base, args.moved, args.seed)
    t = base.table
    keep = ~((t.domain == "field") & (t.split == "train") & t.class_id.astype(str).isin(moved)).to_numpy()
    print(f"2. without pairs: moved {moved}", flush=True)
    res["without_pairs_variant"] = {
        "moved": moved,
        "moved_species": [base.classes[c] for c in moved],
        "dropped_training_photos": int((~keep).sum()),
        "rows": classifier_grid(base, args.n_boot, args.seed, train_mask=keep),
    }
    print("3. architecture / normalisation", flush=True)
    arch: dict[str, Any] = {"variants": {}, "paired_vs_default": {}}
    for name, f in feats.items():
        print(f"  {name}", flush=True)
        arch["variants"][name] = {
            "spec": {
                "backbone": f.meta["spec"]["backbone"],
                "preprocessing": f.meta["spec"]["preprocessing"],
            },
            "classifiers": res["classifiers"]
            if name == DEFAULT
            else classifier_grid(f, args.n_boot, args.seed, aligns=("none",)),
            "probes": retrieval_probes(f, args.n_boot, args.seed),
            "imagenet": imagenet_confidence(data, f, VARIANTS[name]),
        }
    y_test = labels_of(base, base.select(split="test")[0])
    hits = {}
    for name, f in feats.items():
        test, x = f.select(split="test")
        hits[name] = {}
        for clf in ("logreg", "ncm"):
            s = fit_classic(f, clf).scores(x)
            hits[name][clf] = (ranks(s, y_test) <= 1).astype(int)
        for probe in ("sheet_retrieval", "field_1nn_loo"):
            hits[name][probe] = np.array(arch["variants"][name]["probes"][probe]["hits_top1"])
        hits[name]["imagenet_confidence"] = np.array(arch["variants"][name]["imagenet"]["max_prob"])
    for name in feats:
        if name != DEFAULT:
            arch["paired_vs_default"][name] = {
                k: paired_diff(hits[DEFAULT][k], hits[name][k], args.n_boot, args.seed) for k in PAIRED
            }
    agree = arch["variants"]
    d0 = np.array(agree[DEFAULT]["imagenet"]["top1_class"])
    arch["imagenet_top1_agreement_with_default"] = {
        n: round(float((np.array(v["imagenet"]["top1_class"]) == d0).mean()), 3) for n, v in agree.items()
    }
    arch["verdict"] = verdict(arch)
    res["architecture"] = arch
    path = write_result(NAME, res)
    md = markdown(res)
    write_doc(md)
    print()
    print(md)
    print(f"\nwrote {path} and {DOC}")


if __name__ == "__main__":
    main()
