"""The evaluate workflow (:mod:`raymm.workflows.evaluate`) on the session's model with a ranker: the
document, its JSON and a summary with every column and the ranking stage; and the ablation's plan."""

from __future__ import annotations

from pathlib import Path

from raymm.data import io
from raymm.workflows.evaluate import evaluate, plan_ablation, plan_evaluate
from tests.conftest import Trained, shared_config


def test_evaluate_ranks_the_model_and_its_ranking_stage(trained: Trained, tmp_path: Path) -> None:
    config = shared_config(tmp_path)
    out = tmp_path / "evaluation"
    run = evaluate(
        config,
        data=str(trained.data),
        features=str(trained.features),
        model=str(trained.ranked),
        out=str(out),
    )
    written = io.read_json(str(out / "evaluation.json"))
    assert written["model"]["model_version"] == run.document["model"]["model_version"]
    assert "rank" in written and run.k == 20
    rows = run.summary_rows()
    assert rows[-1] == ("written to", f"{out}/evaluation.json")
    # "test recall@20" twice: the protocol's columns, then retrieval against retrieve-then-rank.
    protocol, ranked = [value for name, value in rows if name == "test recall@20"]
    served = run.document["model"]["metrics"]["test"]["recall@20"]
    assert protocol.startswith(f"served {served:.4f}   no fallback ") and "all-time pop" in protocol
    listwise = run.document["rank"]["listwise"]["retrieve_then_rank"]["recall@20"]
    assert ranked.endswith(f"retrieve-then-rank {listwise:.4f}")
    auc = run.document["rank"]["pointwise"]["auc"]
    assert dict(rows)["rank test auc / log-loss / f1"].startswith(f"{auc:.4f} / ")


def test_the_plans_name_the_model_and_the_variants(tmp_path: Path) -> None:
    config = shared_config(tmp_path, "ablation.variants=[popularity,contrastive+gated]")
    assert plan_evaluate(config).steps[0][1] == str(tmp_path / "model")
    assert [step for step, _ in plan_evaluate(config, out="o").steps][-1] == "write evaluation.json"
    steps = plan_ablation(config).steps
    assert steps[0] == ("popularity baseline (no training)", str(tmp_path / "report"))
    assert steps[1] == (
        "Ray Train contrastive+gated",
        str(tmp_path / "report" / "models" / "contrastive+gated"),
    )
