"""The train workflow (:mod:`raymm.workflows.train`) runs Ray Train for real: paths by keyword, the
artifact under the output root by default, and a summary that reads the artifact it wrote.
``train_ranker`` runs through ``raymm train --stage rank`` in tests/rank/test_training.py."""

from __future__ import annotations

from pathlib import Path

from raymm.models.artifact import read_manifest
from raymm.workflows.train import plan_train, plan_train_ranker, train
from tests.conftest import Trained, shared_config


def test_train_writes_the_artifact_under_the_output_root(trained: Trained, tmp_path: Path) -> None:
    config = shared_config(tmp_path, "train.epochs=1")
    run = train(config, data=str(trained.data), features=str(trained.features))
    assert run.model == str(tmp_path / "model")
    manifest = read_manifest(run.model)
    rows = dict(run.summary_rows())
    assert rows["model version"] == manifest.model_version
    assert rows["epochs run"] == 1 and rows["features"] == str(trained.features)
    assert run.elapsed_s is not None and run.elapsed_s > 0


def test_the_plans_say_where_each_run_writes(tmp_path: Path) -> None:
    config = shared_config(tmp_path, "train.run.num_workers=2")
    steps = plan_train(config).steps
    assert steps[0][0].startswith("Ray Train: 2 worker(s)") and steps[-1] == (
        "write the model artifact",
        str(tmp_path / "model"),
    )
    assert plan_train_ranker(config, model="m").steps[-1] == ("add ranker/ to the two-tower artifact", "m")
