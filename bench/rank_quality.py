"""Ranking quality: does re-ranking the retriever's top-N with the ranker beat retrieval alone?

On the ``small`` benchmark (``--data-root``, default ``out/quickstart``; synthesized and extracted
there when missing), with ``configs/quickstart.yaml``:

1. ``train()`` the two-tower model for ``--epochs`` epochs (Ray Train, 1 worker);
2. ``train_ranker()`` on top of it (``rank`` section defaults: settings chosen on the validation
   split, see ``RankerConfig``; the retriever-logit weight is picked on validation by the trainer);
3. ``evaluate_rank()`` on the test split: pointwise AUC / log-loss / F1 at the validation
   threshold, and Recall/NDCG@K of retrieval alone vs retrieve-then-rank (top 200 re-ranked),
   seen items excluded.

Nothing is tuned on the test split. The artifact (two-tower + ranker) is kept in ``--work``
(default ``out/rank_quality``), where ``bench/rank_latency.py`` reads it. Prints one JSON line and
writes ``bench/results/rank_quality.json``; ``ndcg@20_ratio`` is retrieve-then-rank / retrieval.

    .venv/bin/python bench/rank_quality.py [--epochs 3] [--data-root out/quickstart]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from _shared import BASE_CONFIG, QUICKSTART, ROOT, ensure_quickstart, finish, log

from raymm.config import load_config
from raymm.eval.rank import evaluate_rank, rank_markdown
from raymm.runtime import init_ray
from raymm.training.rank_trainer import train_ranker
from raymm.training.trainer import train

BENCH = "rank_quality"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="two-tower epochs")
    parser.add_argument("--data-root", type=Path, default=QUICKSTART, help="holds data/ and features/")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / BENCH, help="artifact and checkpoints")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    model = args.work / "model"
    # Ray workers' output is forwarded to the driver's stdout; keep stdout for the JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        data, features = ensure_quickstart(args.data_root, BENCH)
        config = load_config(
            BASE_CONFIG,
            [f"out={args.work}", f"train.epochs={args.epochs}", *args.overrides],
        )
        init_ray(config.ray)
        log(BENCH, f"two-tower: {args.epochs} epochs")
        retrieval = train(config, str(data), str(features), str(model))
        log(BENCH, "ranker")
        ranked = train_ranker(config, str(data), str(features), str(model), run=config.train.run)
        log(BENCH, "evaluating on the test split")
        result = evaluate_rank(config, str(data), str(features), str(model), out_dir=str(args.work))
        log(BENCH, "\n" + rank_markdown(result))
    listwise = result["listwise"]
    headline = {
        "test_auc": result["pointwise"]["auc"],
        "test_log_loss": result["pointwise"]["log_loss"],
        "test_f1": result["pointwise"]["f1"],
        "test_auc_logged_events": result["pointwise_logged"]["auc"],
        **{
            f"{method}_{metric}@20": listwise[method][f"{metric}@20"]
            for method in ("retrieval", "retrieve_then_rank")
            for metric in ("recall", "ndcg")
        },
    }
    report = {
        "question": "does retrieve-then-rank beat retrieval alone on NDCG@20 (test split, top 200 re-ranked)?",
        "data": data.name,
        "ratios": {
            "ndcg@20_ratio": listwise["retrieve_then_rank"]["ndcg@20"] / listwise["retrieval"]["ndcg@20"],
            "recall@20_ratio": listwise["retrieve_then_rank"]["recall@20"]
            / listwise["retrieval"]["recall@20"],
        },
        "improves_ndcg@20": listwise["retrieve_then_rank"]["ndcg@20"] > listwise["retrieval"]["ndcg@20"],
        "headline": headline,
        "rank_config": config.rank.model_dump(mode="json"),
        "retrieval_weight": ranked.metrics["retrieval_weight"],
        "validation": {
            "ranker": ranked.metrics["validation"],
            "ndcg@20_by_retrieval_weight": ranked.metrics["validation_ndcg_by_retrieval_weight"],
            "two_tower_best": retrieval.manifest.metrics["validation"],
        },
        "test": {k: v for k, v in result.items() if k != "plots"},
        "ranker_history": ranked.history,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    return finish(BENCH, report, args.out)


if __name__ == "__main__":
    main()
