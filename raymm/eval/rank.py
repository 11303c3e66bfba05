"""Evaluation of the ranking stage on the test split: pointwise quality and retrieve-then-rank.

* **pointwise** (:mod:`raymm.eval.pointwise`): the ranker's P(engage) on the test split's
  labelled examples (built as for training: logged positives and skips plus sampled uniform and
  hard negatives, seeded), at the threshold chosen on validation (max F1, saved with the
  ranker): AUC, log-loss, accuracy, precision, recall, F1, ECE; ``pointwise_logged`` is the same
  on the logged events alone (engagements vs skips, no sampled negatives: the harder question);
  a reliability curve is drawn when an output folder is given.
* **listwise**: the users of ``raymm evaluate``'s test protocol (test-period positives by
  ``train.positive_events``, history and seen items from train + validation, seen items
  excluded). ``retrieval`` ranks the whole catalog by the two-tower score (the numbers ``raymm
  evaluate`` prints); ``retrieve_then_rank`` re-orders the retriever's top ``rank.retriever_top_n``
  by the ranker's probability. For K <= top-N, both see the same candidate set, so the
  difference is the ranker's ordering alone. Recency at test time is the hours from the user's
  last train/validation event to the start of the test period (the serving-time analogue).

:func:`evaluate_rank` returns a dict; :func:`rank_markdown` renders it as a markdown section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.data.dataset import load_dataset
from raymm.eval.pointwise import calibration_curve, classification_metrics, plot_calibration
from raymm.models.artifact import RANKER_DIR, read_manifest
from raymm.models.ranker import Ranker
from raymm.models.towers import TwoTower
from raymm.train.data import eval_users
from raymm.train.rank_data import LOGGED
from raymm.train.rank_loop import RankObjective, held_out_recency, predict, retrieve_then_rank
from raymm.train.rank_trainer import RankSetup, rank_setup, split_examples


def has_ranker(model_dir: str) -> bool:
    """Whether the artifact at ``model_dir`` records a trained ranking stage in its manifest."""
    return "rank" in read_manifest(model_dir).get("stages", {})


def load_ranker(model_dir: str, two_tower: TwoTower) -> Ranker:
    """The artifact's ranker, checked against its two-tower model; ``ModelLoadError`` if it does not fit."""
    return Ranker.from_pretrained(
        Path(model_dir) / RANKER_DIR,
        modalities=two_tower.modalities,
        shared_dim=two_tower.config.align.shared_dim,
        embed_dim=two_tower.config.towers.embed_dim,
    )


def evaluate_rank(
    config: RaymmConfig,
    data_dir: str,
    features_dir: str,
    model_dir: str,
    out_dir: str | None = None,
    setup: RankSetup | None = None,
) -> dict[str, Any]:
    """Pointwise and listwise test metrics of the artifact's ranker (see the module docstring).

    Returns ``{"threshold", "top_n", "ks", "pointwise", "pointwise_logged", "calibration",
    "listwise": {"retrieval", "retrieve_then_rank"}, "users", "plots"}``; with ``out_dir`` the
    reliability curve is written to ``<out_dir>/rank_calibration.png``. ``setup`` reuses a
    :func:`~raymm.train.rank_trainer.rank_setup` already loaded. Raises
    :class:`~raymm.models.errors.ModelLoadError` for an artifact without a fitting ranker.
    """
    data_dir, features_dir = io.absolute(data_dir), io.absolute(features_dir)
    setup = setup or rank_setup(config, data_dir, features_dir, model_dir)
    ranker = load_ranker(model_dir, setup.two_tower)
    test = split_examples(config, setup, data_dir, "test", config.seed + 2)
    probabilities = predict(RankObjective(ranker, setup.inputs), setup.two_tower, test)
    logged = test.kind == LOGGED
    dataset = load_dataset(data_dir, tables=())
    context = pa.concat_tables([dataset.interactions("train"), dataset.interactions("validation")])
    test_events = dataset.interactions("test")
    users = eval_users(
        context, test_events, setup.catalog, config.train.positive_events, config.train.max_history
    )
    recency = held_out_recency(context, test_events, users.user_ids)
    top_n = config.rank.retriever_top_n
    ks = config.evaluate.ks
    curve = calibration_curve(test.label, probabilities)
    plots: dict[str, str] = {}
    if out_dir is not None:
        io.makedirs(out_dir)
        plots["calibration"] = plot_calibration({"test": curve}, str(Path(out_dir) / "rank_calibration.png"))
    return {
        "threshold": ranker.threshold,
        "top_n": top_n,
        "ks": list(ks),
        "pointwise": classification_metrics(test.label, probabilities, ranker.threshold),
        "pointwise_logged": classification_metrics(
            test.label[logged], probabilities[logged], ranker.threshold
        ),
        "calibration": curve,
        "listwise": retrieve_then_rank(setup.two_tower, ranker, setup.inputs, users, recency, ks, top_n),
        "users": int((users.truth.sizes > 0).sum()),
        "plots": plots,
    }


def rank_markdown(result: dict[str, Any]) -> str:
    """A markdown section for a report: the pointwise table and retrieval vs retrieve-then-rank."""
    point, logged = result["pointwise"], result["pointwise_logged"]
    names = ("auc", "log_loss", "accuracy", "precision", "recall", "f1", "ece")
    lines = [
        "## Ranking stage (test split)",
        "",
        f"Threshold {result['threshold']:.3f} (max F1 on validation). Logged events only: engagements vs "
        "skips, no sampled negatives.",
        "",
        "| examples | n | " + " | ".join(n.replace("_", "-") for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for label, row in (("all (with sampled negatives)", point), ("logged events only", logged)):
        lines.append(f"| {label} | {int(row['n'])} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
    listwise = result["listwise"]
    lines += [
        "",
        f"Retrieval alone vs its top {result['top_n']} re-ranked by the ranker ({result['users']} test users, "
        "seen items excluded):",
        "",
        "| method | " + " | ".join(f"Recall@{k} | NDCG@{k}" for k in result["ks"]) + " |",
        "|---|" + "---:|---:|" * len(result["ks"]),
    ]
    for label, key in (("retrieval", "retrieval"), ("retrieve-then-rank", "retrieve_then_rank")):
        metrics = listwise[key]
        cells = " | ".join(f"{metrics[f'recall@{k}']:.4f} | {metrics[f'ndcg@{k}']:.4f}" for k in result["ks"])
        lines.append(f"| {label} | {cells} |")
    if result["plots"].get("calibration"):
        lines += ["", f"![calibration]({Path(result['plots']['calibration']).name})"]
    return "\n".join(lines) + "\n"
