"""Quality on the synthetic benchmark: the ablation of design.md section 4, and whether its orderings hold.

The question: on the ``small`` synthetic benchmark, does aligned+fused (the configured model,
contrastive alignment + gated fusion) beat the best single modality (chosen on validation) on
Recall@20 and NDCG@20, match plain concatenation with every modality present, beat it when 50% of
the images are missing, and beat the content baseline and the best single modality on cold-start
items (popularity is a random order there, so no yardstick)? ``none+gated``
and ``contrastive+concat`` sit between concat and aligned+fused, so the report shows alignment and
fusion apart. The numbers are reported as they come out; a target that misses says so
(``orderings``), nothing is tuned per variant.

Runs :func:`raymm.workflows.ablation.ablation` with ``configs/quickstart.yaml`` and ``train.epochs=4``
(``--epochs``; one Ray Train run per variant, 1 worker) on ``out/quickstart`` (synthesized and
extracted when absent), variants :data:`VARIANTS`, ``missing_modality=image`` at rate 0.5, with
``concat`` and ``contrastive+gated`` re-trained on the degraded features. The report (report.md,
report.json, plots, model artifacts) goes to ``--report`` (default ``out/quality_synth``); the
headline numbers to ``bench/results/quality_synth.json`` and one JSON line on stdout.
With ``--seeds 0,1,2`` the whole ablation runs once per seed (the model's seed; the data stay
the same) and each ordering is judged over the seeds with a paired test: mean +- sd of the
per-seed differences and the exact one-sided sign-flip p-value (2^-n at best, so n >= 5 seeds
are needed for p < 0.05). One seed reports what it saw, and no ordering "holds" from it.

    .venv/bin/python bench/quality_synth.py [--epochs 4] [--seeds 0] [--variants text,concat,...] [--report DIR]
    .venv/bin/python bench/quality_synth.py --quick   # smoke run (make bench QUICK=1): quality_synth.quick.json

``--quick`` trains :data:`QUICK_VARIANTS` for one epoch on the ``tiny`` benchmark with facet
features (``_shared.facets``: no extraction) into ``out/quality_synth-quick`` and re-evaluates
them on the degraded features without re-training: it checks that the ablation and its report
run, not the orderings.

Reproducibility (design.md invariant 6, issue 24): ``--hogs N`` runs it with N processes spinning the
CPUs, ``--compare RUN.json`` reports the largest difference of any test or cold-start metric of
any row against another run (``all_test_metrics``), e.g. a quiet run and a loaded one:

    .venv/bin/python bench/quality_synth.py --variants contrastive+gated --out bench/results/quality_synth.quiet.json
    .venv/bin/python bench/quality_synth.py --variants contrastive+gated --hogs 2 --compare bench/results/quality_synth.quiet.json --out bench/results/quality_synth.loaded.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _shared import BASE_CONFIG, QUICKSTART, ROOT, ensure_quickstart, finish, log, result_path
from _shared.facets import tiny_facet_dataset
from _shared.measure import start_hogs, stop_hogs

from raymm.config import load_config
from raymm.eval.report import FULL, best_single_modality
from raymm.workflows.ablation import ablation
from raymm.workflows.settings import AblationConfig

BENCH = "quality_synth"
#: The target of design.md section 4 this benchmark measures: `make bench` runs it.
DESIGN_TARGET = "Quality"
#: Ray starts its worker processes at this niceness.
RAY_WORKER_NICENESS = 15
#: The full default ablation (``ablation.variants``) plus the other aligners and fusions.
_BASELINES = ("popularity", "content")
VARIANTS = (
    *(v for v in AblationConfig().variants if v not in _BASELINES),
    "cca+gated",
    "kg+gated",
    "contrastive+attention",
    *_BASELINES,
)
HEADLINE = "contrastive+gated"
#: ``--quick``: two trained variants (each Ray Train run costs ~20 s of start-up here) and the
#: training-free baselines, one epoch on the ``tiny`` benchmark with facet features (no extraction).
QUICK_VARIANTS = ("text", HEADLINE, "popularity", "content")


def _numbers(rows: list[dict[str, Any]], variant: str, setting: str, k: int) -> dict[str, float] | None:
    """Recall/NDCG@k on both protocols of the row of ``variant`` whose setting contains ``setting``."""
    for row in rows:
        if row["variant"] == variant and setting in row["setting"]:
            return {
                f"{protocol}_{name}@{k}": round(metrics[f"{name}@{k}"], 4)
                for protocol, metrics in row["metrics"].items()
                for name in ("recall", "ndcg")
            }
    return None


def headline(document: dict[str, Any]) -> dict[str, Any]:
    """Best single modality (on validation) vs aligned+fused vs concat, with and without missing;
    cold-start vs the content baseline and the best single modality."""
    k, rows = document["k"], document["rows"]
    best = best_single_modality(document)  # chosen on validation
    return {
        "k": k,
        "best_single_modality": best
        and {
            "variant": best["variant"],
            f"validation_ndcg@{k}": round(best[f"validation_ndcg@{k}"], 4),
            **(_numbers(rows, best["variant"], FULL, k) or {}),
        },
        "aligned_fused": _numbers(rows, document["headline"], FULL, k),
        "concat": _numbers(rows, "concat", FULL, k),
        "popularity": _numbers(rows, "popularity", FULL, k),
        "content": _numbers(rows, "content", FULL, k),
        "missing": {
            f"{variant} {setting}": _numbers(rows, variant, setting, k)
            for variant in (document["headline"], "concat")
            for setting in ("re-trained", "same model")
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per variant (default 4; --quick 1)")
    parser.add_argument(
        "--variants", default=None, help=f"comma-separated ablation variants (default {','.join(VARIANTS)})"
    )
    parser.add_argument("--data-root", type=Path, default=QUICKSTART, help="holds data/ and features/")
    parser.add_argument(
        "--report", type=Path, default=None, help="report directory (default out/quality_synth[-quick])"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated model seeds (paired test over them)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    parser.add_argument(
        "--hogs", type=int, default=0, help="processes spinning the CPUs for the whole run (a loaded machine)"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="another run's result JSON: report the largest difference of any test metric against it",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the tiny benchmark with facet features, 1 epoch, "
        f"{','.join(QUICK_VARIANTS)}; writes {BENCH}.quick.json",
    )
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 4)
    args.variants = args.variants or ",".join(QUICK_VARIANTS if args.quick else VARIANTS)
    args.report = args.report or ROOT / "out" / ("quality_synth-quick" if args.quick else "quality_synth")
    return args


def test_metrics(document: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every row's every test and cold-start metric, unrounded (what two runs must agree on)."""
    return {
        row["label"]: {
            f"{protocol}/{name}": float(value)
            for protocol in ("test", "cold_start")
            for name, value in row["metrics"].get(protocol, {}).items()
        }
        for row in document["rows"]
    }


def compare(mine: dict[str, dict[str, float]], other_path: Path) -> dict[str, Any]:
    """The largest absolute difference of any metric both runs report, and where it is."""
    other = json.loads(other_path.read_text()).get("all_test_metrics") or {}
    differences = [
        (abs(value - other[label][name]), f"{label} {name}")
        for label, metrics in mine.items()
        for name, value in metrics.items()
        if name in other.get(label, {})
    ]
    if not differences:
        raise SystemExit(
            f"{other_path} shares no metric with this run (is it a quality_synth result with all_test_metrics?)"
        )
    worst, where = max(differences)
    return {
        "against": other_path.name,
        "metrics_compared": len(differences),
        "max_abs_diff": worst,
        "where": where,
        "identical": worst == 0.0,
    }


def paired(differences: list[float]) -> dict[str, Any]:
    """Mean +- sd of per-seed differences (left - right) and the exact one-sided sign-flip p-value
    of "left > right" (the share of the 2^n sign patterns whose mean is at least the observed)."""
    values = np.asarray(differences, dtype=np.float64)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=values.size)))
    p = float(np.mean((signs * np.abs(values)).mean(axis=1) >= values.mean() - 1e-12))
    return {
        "n_seeds": int(values.size),
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if values.size > 1 else None,
        "p_sign_flip": p,
        "holds": bool(values.size >= 5 and p < 0.05),
    }


def over_seeds(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Each ordering's Recall@k difference per seed, and the paired test over the seeds."""
    result: dict[str, Any] = {}
    for index, ordering in enumerate(documents[0]["orderings"]):
        key = f"recall@{ordering['k']}"
        diffs = []
        for document in documents:
            judged = document["orderings"][index]
            if judged["holds"] is None:
                break
            diffs.append(judged["left_values"][key] - judged["right_values"][key])
        result[ordering["name"]] = paired(diffs) if len(diffs) == len(documents) else {"holds": None}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    config = load_config(
        BASE_CONFIG,
        [
            f"out={args.report}",
            f"train.epochs={args.epochs}",
            f"ablation.variants=[{','.join(variants)}]",
            "ablation.missing_modality=image",
            "ablation.missing_rate=0.5",
            "ablation.missing_retrain=[]" if args.quick else f"ablation.missing_retrain=[concat,{HEADLINE}]",
            *(["train.batch_size=128"] if args.quick else []),
        ],
    )
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    documents = []
    # At Ray's worker niceness (15): at 0 they would starve Ray's workers rather than share the cores
    # (reproducible.py's training took 200x longer under two such hogs).
    hogs = start_hogs(args.hogs, niceness=RAY_WORKER_NICENESS)
    # Ray workers' output is forwarded to the driver's stdout; keep stdout for the JSON line.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if args.quick:  # seconds to make, against minutes of extraction for the small benchmark
                data, features = tiny_facet_dataset(args.report / "tiny", seed=0, missing_image=0.3)
            else:
                data, features = ensure_quickstart(args.data_root, BENCH)
            for seed in seeds:
                seeded = config.model_copy(deep=True)
                seeded.seed = seed
                out = args.report if len(seeds) == 1 else args.report / f"seed-{seed}"
                log(BENCH, f"seed {seed}")
                documents.append(
                    ablation(seeded, str(data), str(features), str(out), progress=lambda m: log(BENCH, m))
                )
        loadavg = round(os.getloadavg()[0], 2)
    finally:
        stop_hogs(hogs)
    document = documents[0]
    all_metrics = test_metrics(document)
    report = {
        "question": "design.md section 4 quality orderings on the small synthetic benchmark",
        "quick": args.quick,
        "data": "tiny, facet features" if args.quick else data.name,
        "epochs": args.epochs,
        "seeds": seeds,
        "variants": variants,
        "headline_variant": document["headline"],
        "numbers": headline(document),
        "orderings_first_seed": {o["name"]: o["holds"] for o in document["orderings"]},
        "orderings_over_seeds": over_seeds(documents),
        "test_recall@20": {
            row["label"]: round(row["metrics"]["test"][f"recall@{document['k']}"], 4)
            for row in document["rows"]
        },
        "train_s": {row["label"]: round(row["train_s"], 1) for row in document["rows"] if row["train_s"]},
        "runtime_s": round(time.perf_counter() - started, 1),
        "cpu_hogs": args.hogs,
        "loadavg_1m_at_end": loadavg,
        "all_test_metrics": all_metrics,
    }
    if args.compare is not None:
        report["compared"] = compare(all_metrics, args.compare)
    return finish(BENCH, report, args.out or result_path(BENCH, args.quick))


if __name__ == "__main__":
    main()
