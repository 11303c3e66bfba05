"""``raymm train --stage rank`` on a real Ray instance: the stage written into the artifact and
evaluated, and a killed worker that resumes from the last checkpoint.

The session's model (``trained`` in tests/conftest.py) carries a ranker trained by
``train_ranker``; the CLI trains one more here, and ``train_ranker`` once more with an injected
worker failure.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from raymm.cli import main
from raymm.eval.rank import rank_markdown
from raymm.models.artifact import MANIFEST, read_manifest
from raymm.recommend.recommender import load_model
from raymm.training import rank_trainer
from raymm.training.loop import RunHooks
from raymm.training.rank_trainer import served_top_n_label, smallest_without_loss, train_ranker
from raymm.training.ray_runner import INJECTED_FAILURE_MARKER
from tests.conftest import RANK_OVERRIDES, Trained, shared_config


def test_serving_hands_the_ranker_the_fewest_candidates_that_lose_nothing_on_validation() -> None:
    assert smallest_without_loss({"200": 0.030, "100": 0.031}, 200) == 100
    assert smallest_without_loss({"200": 0.030, "100": 0.030, "50": 0.029}, 200) == 100
    assert smallest_without_loss({"200": 0.030, "100": 0.029}, 200) == 200
    assert smallest_without_loss({"60": 0.030}, 60) == 60
    metrics = {"served_top_n": 100, "validation_ndcg_by_top_n": {"200": 0.03, "100": 0.031}}
    assert served_top_n_label(metrics) == "100 (validation ndcg@20 by top-N: 100: 0.0310, 200: 0.0300)"
    assert served_top_n_label({"validation": {}}) == ""  # a rank stage from before the choice


def test_rank_stage_is_written_into_the_artifact_and_evaluated(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shared ranker re-ranks 60 candidates (RANK_OVERRIDES); let validation weigh 50 (the
    # largest K evaluation reports) against them, and never 30, which is below it.
    monkeypatch.setattr(rank_trainer, "SERVED_TOP_N_GRID", (30, 50))
    shutil.copytree(trained.model, tmp_path / "model")
    overrides = [f"--set={o}" for o in (f"out={tmp_path}", "ray.num_cpus=2", *RANK_OVERRIDES)]
    argv = [
        "train",
        "--stage",
        "rank",
        "--data",
        str(trained.data),
        "--features",
        str(trained.features),
        "--quiet",
    ]
    assert main([*argv, "--out", str(tmp_path / "model"), *overrides]) == 0
    ranked = tmp_path / "model"
    manifest = read_manifest(ranked)
    assert set(manifest.stages) == {"retrieval", "rank"}
    rank_stage = manifest.stages["rank"]
    assert rank_stage["metrics"]["validation"]["auc"] > 0.6
    assert [row["epoch"] for row in rank_stage["history"]] == [0, 1, 2]
    by_top_n = rank_stage["metrics"]["validation_ndcg_by_top_n"]
    assert set(by_top_n) == {"60", "50"}
    served = rank_stage["metrics"]["served_top_n"]
    assert served == (50 if by_top_n["50"] >= by_top_n["60"] else 60)
    served_model = load_model(ranked)
    # The chosen top-N speeds the usual request; one for more items still gets all 60 re-ranked.
    assert served_model.top_n == served and served_model.max_k == 60
    argv = trained.evaluate_argv(ranked)
    assert main([*argv, "--out", str(tmp_path / "eval"), "--quiet", *overrides]) == 0
    document = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    result = document["rank"]
    assert result["pointwise"]["auc"] > 0.6
    assert 0.0 < result["pointwise"]["log_loss"] < 1.0
    listwise = result["listwise"]
    assert (
        set(listwise) == {"retrieval", "retrieve_then_rank", "two_tower"}
        and "ndcg@20" in listwise["retrieval"]
    )
    # The ranker re-orders what serving retrieves: the served blend, as `raymm evaluate` scores it.
    assert listwise["retrieval"]["ndcg@20"] == pytest.approx(
        document["model"]["metrics"]["test"]["ndcg@20"], abs=1e-9
    )
    assert result["top_n"] == served  # evaluation re-ranks as serving does
    assert (tmp_path / "eval" / "rank_calibration.png").is_file()
    assert "| retrieve-then-rank |" in rank_markdown(result)


def test_a_killed_ranker_worker_resumes_from_the_last_checkpoint(trained: Trained, tmp_path: Path) -> None:
    shutil.copytree(trained.model, tmp_path / "model")
    config = shared_config(tmp_path, "train.run.max_failures=1")
    # 3 steps per epoch: global step 4 falls in the second epoch, after the first checkpoint
    hooks = RunHooks(fail_at_step=4, max_steps_per_epoch=3)
    result = train_ranker(
        config,
        str(trained.data),
        str(trained.features),
        str(tmp_path / "model"),
        run=config.train.run,
        name="faulty",
        hooks=hooks,
    )
    assert len(list((tmp_path / "train").glob(f"faulty-*/{INJECTED_FAILURE_MARKER}"))) == 1
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.history[0]["resumed_from_epoch"] == -1
    assert result.history[-1]["resumed_from_epoch"] == 0
    assert "rank" in json.loads((tmp_path / "model" / MANIFEST).read_text())["stages"]
