"""Evaluation of the ranking stage on the test split: pointwise quality and retrieve-then-rank.

* **pointwise** (:mod:`raymm.eval.pointwise`): the ranker's P(engage) on the test split's
  labelled examples (built as for training by :mod:`raymm.recommend.rank_examples`: logged
  positives and skips plus sampled uniform and hard negatives, seeded), at the threshold chosen on
  validation (max F1, saved with the ranker): AUC, log-loss, accuracy, precision, recall, F1,
  ECE; ``pointwise_logged`` is the same on the logged events alone (engagements vs skips, no
  sampled negatives: the harder question); a reliability curve is drawn when an output folder is
  given.
* **listwise**: the users of ``raymm evaluate``'s test protocol. ``retrieval`` ranks the whole
  catalog by the served retriever (:func:`~raymm.eval.evaluate.served_scorer`: two-tower,
  item-item and popularity, blended as training chose); ``retrieve_then_rank`` re-orders its top
  N by the ranker (:class:`~raymm.recommend.scorers.RetrieveThenRank`, the scorer serving uses,
  over the same retriever; N is the served top-N the rank stage chose on validation, else
  ``rank.retriever_top_n``). For K <= top-N both see the same candidate
  set, so the difference is the ranker's ordering alone. ``two_tower`` is the two-tower score
  alone, for reference. Recency at test time is the hours from the user's last
  train/validation event to the start of the test period (the serving-time analogue).

:func:`evaluate_rank` returns a dict; :func:`rank_markdown` renders it as a markdown section.
"""

from __future__ import annotations

from typing import Any

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.eval.evaluate import EvalSetup, eval_setup, evaluate_scorer, served_scorer
from raymm.eval.pointwise import calibration_curve, classification_metrics, plot_calibration
from raymm.models.artifact import load_artifact, ranker_dir, read_manifest, served_top_n
from raymm.models.ranker import Ranker
from raymm.recommend.rank_examples import LOGGED, RankSetup, predict, rank_setup, split_examples
from raymm.recommend.rerank import Reranker
from raymm.recommend.scorers import RetrieveThenRank, TwoTowerScorer


def has_ranker(model_dir: str) -> bool:
    """Whether the artifact at ``model_dir`` records a trained ranking stage in its manifest."""
    return "rank" in read_manifest(model_dir).stages


def evaluate_rank(
    config: RaymmConfig,
    data_dir: str,
    features_dir: str,
    model_dir: str,
    out_dir: str | None = None,
    setup: RankSetup | None = None,
    protocols: EvalSetup | None = None,
) -> dict[str, Any]:
    """Pointwise and listwise test metrics of the artifact's ranker (see the module docstring).

    Returns ``{"threshold", "top_n", "ks", "pointwise", "pointwise_logged", "calibration",
    "listwise": {"retrieval", "retrieve_then_rank", "two_tower"}, "users", "plots"}``; with ``out_dir`` the
    reliability curve is written to ``<out_dir>/rank_calibration.png``. ``setup`` and
    ``protocols`` reuse what a caller already loaded. Raises
    :class:`~raymm.models.errors.ModelLoadError` for an artifact without a fitting ranker.
    """
    data_dir, features_dir = io.absolute(data_dir), io.absolute(features_dir)
    setup = setup or rank_setup(data_dir, features_dir, model_dir)
    protocols = protocols or eval_setup(config, data_dir, features_dir)
    ranker = Ranker.from_pretrained(
        ranker_dir(model_dir),
        modalities=setup.two_tower.modalities,
        shared_dim=setup.two_tower.config.align.shared_dim,
        embed_dim=setup.two_tower.config.towers.embed_dim,
    )
    reranker = Reranker.from_inputs(ranker, setup.catalog.item_ids, setup.inputs)
    test = split_examples(setup, config.rank, data_dir, "test", config.seed + 2)
    probabilities = predict(reranker, setup.two_tower, test)
    logged = test.kind == LOGGED
    protocol = protocols.protocols["test"]
    artifact = load_artifact(model_dir, expected_dims=protocols.catalog.dims)
    top_n = served_top_n(artifact.manifest)  # as serving re-ranks
    ks = config.evaluate.ks
    if list(protocols.catalog.item_ids) != list(setup.catalog.item_ids):
        raise ValueError(
            f"{model_dir}: the ranking setup's catalog and the test protocol's differ in items or order"
        )
    two_tower = TwoTowerScorer(setup.two_tower, setup.catalog)
    # Retrieval as serving does it (Recommender.retriever): the blend training chose.
    retriever, _ = served_scorer(artifact, protocols, ks)
    listwise = {
        name: evaluate_scorer(scorer, protocol.users, ks, setup.catalog.n_items, recency=protocol.recency)
        for name, scorer in (
            ("retrieval", retriever),
            ("retrieve_then_rank", RetrieveThenRank(retriever, two_tower, reranker, top_n)),
            ("two_tower", two_tower),
        )
    }
    curve = calibration_curve(test.label, probabilities)
    plots: dict[str, str] = {}
    if out_dir is not None:
        io.makedirs(out_dir)
        plots["calibration"] = plot_calibration({"test": curve}, io.join(out_dir, "rank_calibration.png"))
    return {
        "threshold": ranker.threshold,
        "top_n": top_n,
        "ks": list(ks),
        "pointwise": classification_metrics(test.label, probabilities, ranker.threshold),
        "pointwise_logged": classification_metrics(
            test.label[logged], probabilities[logged], ranker.threshold
        ),
        "calibration": curve,
        "listwise": listwise,
        "users": int((protocol.users.truth.sizes > 0).sum()),
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
    for label, key in (
        ("retrieval (served blend)", "retrieval"),
        ("retrieve-then-rank", "retrieve_then_rank"),
        ("two-tower alone", "two_tower"),
    ):
        metrics = listwise[key]
        cells = " | ".join(f"{metrics[f'recall@{k}']:.4f} | {metrics[f'ndcg@{k}']:.4f}" for k in result["ks"])
        lines.append(f"| {label} | {cells} |")
    if result["plots"].get("calibration"):
        lines += ["", f"![calibration]({result['plots']['calibration'].rsplit('/', 1)[-1]})"]
    return "\n".join(lines) + "\n"
