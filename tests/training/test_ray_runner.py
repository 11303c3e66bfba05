"""The Ray Train wrapper (raymm/training/ray_runner.py) on its own, with a loop of a few lines on the
session's Ray: what :func:`run_on_ray` returns and keeps in storage, the error a failed run raises,
the per-epoch reshuffle of :func:`shuffled_examples`, and :func:`deterministic`."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from raymm.training.loop import Checkpoint, RunHooks, StepOutput, fit
from raymm.training.ray_runner import (
    CHECKPOINT_FILE,
    INJECTED_FAILURE_MARKER,
    TrainingError,
    WorkerRun,
    deterministic,
    run_on_ray,
    shuffled_examples,
)
from tests.fixtures import small_model_config

ROWS, BATCH = 40, 8  # 5 steps an epoch


def _linear_loop() -> Callable[[dict[str, Any]], None]:
    """A loop that fits y = 2 x0 - x1 with one linear layer, through every hook :class:`WorkerRun` gives.

    Made here, not at module level: Ray pickles a module-level function by its module's name, which
    pytest imports as ``training.test_ray_runner``, a name the workers cannot import.
    """

    def loop(loop_config: dict[str, Any]) -> None:
        run = WorkerRun(loop_config)
        torch.manual_seed(0)
        model = nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        state = run.restore(model, optimizer)
        wrapped = run.prepare(model)

        def step(batch: dict[str, torch.Tensor]) -> StepOutput:
            x = torch.stack([batch["x0"], batch["x1"]], dim=1).float()
            loss = ((wrapped(x).squeeze(1) - batch["y"].float()) ** 2).mean()
            return StepOutput(loss, len(x))

        def validate() -> dict[str, float]:
            return {"weight_error": -float((model.weight - torch.tensor([[2.0, -1.0]])).abs().sum())}

        fit(
            model,
            optimizer,
            step,
            run.batches(BATCH),
            run.on_rank0(validate),
            epochs=loop_config["epochs"],
            patience=10,
            metric="weight_error",
            state=state,
            on_epoch=run.reporter(model, optimizer),
            before_step=run.before_step,
        )

    return loop


def _examples() -> pa.Table:
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=ROWS), rng.normal(size=ROWS)
    return pa.table({"x0": x0, "x1": x1, "y": 2 * x0 - x1})


def test_a_run_returns_its_last_checkpoint_and_keeps_two_whole_ones(
    ray_session: None, tmp_path: Path
) -> None:
    # a worker that fails and resumes is tests/training/test_trainer.py's and test_rank_trainer.py's
    config = small_model_config(tmp_path)
    saved = run_on_ray(
        _linear_loop(),
        {"epochs": 3},
        config,
        config.train.run,
        "tiny",
        shuffled_examples(_examples(), 0),
        "tiny run",
    )
    assert isinstance(saved, Checkpoint)
    assert (saved.state.epoch, saved.state.step) == (2, 3 * ROWS // BATCH)
    assert [row["epoch"] for row in saved.state.history] == [0, 1, 2]
    assert saved.state.resumed_from == -1
    assert set(saved.model) == {"weight", "bias"}
    assert saved.state.best_score > saved.state.history[0]["val_weight_error"]  # it learned
    run_dir = tmp_path / "train" / "tiny"
    kept = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    assert len(kept) == 2  # CheckpointConfig(num_to_keep=2)
    for checkpoint in kept:  # written whole: the file under its name, no temporary left
        assert sorted(f.name for f in checkpoint.iterdir()) == [CHECKPOINT_FILE]
    latest = Checkpoint.load(str(kept[-1] / CHECKPOINT_FILE))
    assert latest.state.epoch == 2 and torch.equal(latest.model["weight"], saved.model["weight"])


def test_a_run_that_fails_beyond_its_restarts_names_the_run_and_its_storage(
    ray_session: None, tmp_path: Path
) -> None:
    config = small_model_config(tmp_path, "train.run.max_failures=0")
    where = re.escape(str(tmp_path / "train" / "broken"))
    with pytest.raises(
        TrainingError,
        match=rf"(?s)^tiny run 'broken' \(checkpoints in {where}\) failed: .*injected worker failure at step 2 ",
    ):
        run_on_ray(
            _linear_loop(),
            {"epochs": 2},
            config,
            config.train.run,
            "broken",
            shuffled_examples(_examples(), 0),
            "tiny run",
            RunHooks(fail_at_step=2),
        )
    assert (tmp_path / "train" / "broken" / INJECTED_FAILURE_MARKER).is_file()  # before_step's record


def _orders(seed: int, executions: int) -> list[list[int]]:
    dataset = shuffled_examples(pa.table({"row": np.arange(200)}), seed)
    return [[row["row"] for row in dataset.take_all()] for _ in range(executions)]


def test_each_execution_reads_a_new_order_reproducible_from_the_seed(ray_session: None) -> None:
    first, second = _orders(seed=7, executions=2)
    assert sorted(first) == sorted(second) == list(range(200))  # every row once
    assert first != second and first != list(range(200))
    assert _orders(seed=7, executions=2) == [first, second]
    assert _orders(seed=8, executions=1)[0] != first


def test_deterministic_turns_on_deterministic_kernels_and_pins_cublas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(False)
    try:
        deterministic()
        assert torch.are_deterministic_algorithms_enabled()
        assert (
            torch.is_deterministic_algorithms_warn_only_enabled()
        )  # warns, never fails, on an op without one
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        deterministic()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # a setting of the user's is kept
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
