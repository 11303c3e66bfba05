"""The one training loop, without Ray: early stopping, best weights, resume, the validation metric."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from raymm.training.loop import Checkpoint, LoopState, StepOutput, fit


def _regression(
    seed: int = 0,
) -> tuple[nn.Linear, torch.optim.Optimizer, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = nn.Linear(3, 1)
    return (
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)],
    )


def _step(model: nn.Linear):
    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        x, y = batch
        return StepOutput(nn.functional.mse_loss(model(x), y), len(x))

    return step


def test_early_stopping_keeps_the_best_epoch_and_its_weights() -> None:
    model, optimizer, batches = _regression()
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.9])  # best at epoch 1, then two worse epochs
    seen_weights: list[dict[str, torch.Tensor]] = []

    def validate() -> dict[str, float]:
        seen_weights.append(copy.deepcopy(model.state_dict()))
        return {"ndcg@20": next(scores)}

    state = fit(
        model, optimizer, _step(model), lambda _e: batches, validate, epochs=6, patience=2, metric="ndcg@20"
    )
    assert [row["epoch"] for row in state.history] == [
        0,
        1,
        2,
        3,
    ]  # stopped after 2 epochs without a better score
    assert state.best_epoch == 1 and state.best_score == 0.5 and state.bad_epochs == 2
    assert state.best_weights is not None
    for key, value in state.best_weights.items():
        assert torch.equal(value, seen_weights[1][key])
    assert state.step == 4 * len(batches)
    assert state.history[1]["val_ndcg@20"] == 0.5 and "train_loss" in state.history[0]


def test_a_run_resumed_from_a_checkpoint_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    def run(stop_after: int | None, state: LoopState | None = None, model=None, optimizer=None):
        if model is None:
            model, optimizer, _ = _regression()
        _, _, batches = _regression()

        def on_epoch(row: dict[str, float], loop_state: LoopState) -> None:
            Checkpoint(model.state_dict(), optimizer.state_dict(), loop_state).save(str(tmp_path / "ckpt.pt"))
            if stop_after is not None and loop_state.epoch == stop_after:
                raise KeyboardInterrupt  # the worker dies right after its checkpoint

        def validate() -> dict[str, float]:
            with torch.no_grad():
                return {"neg_mse": -float(sum(nn.functional.mse_loss(model(x), y) for x, y in batches))}

        final = fit(
            model,
            optimizer,
            _step(model),
            lambda _e: batches,
            validate,
            epochs=5,
            patience=10,
            metric="neg_mse",
            state=state,
            on_epoch=on_epoch,
        )
        return model, final

    uninterrupted, expected = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(stop_after=1)
    saved = Checkpoint.load(str(tmp_path / "ckpt.pt"))
    model, optimizer, _ = _regression(seed=123)  # different init: everything must come from the checkpoint
    model.load_state_dict(saved.model)
    optimizer.load_state_dict(saved.optimizer)
    resumed, state = run(None, saved.state, model, optimizer)
    assert [int(row["epoch"]) for row in state.history] == [0, 1, 2, 3, 4]
    assert state.step == expected.step
    assert torch.allclose(resumed.weight, uninterrupted.weight) and state.best_score == pytest.approx(
        expected.best_score
    )


def test_a_metric_validation_does_not_compute_is_an_error_naming_both() -> None:
    model, optimizer, batches = _regression()
    with pytest.raises(KeyError, match=r"'ndcg@50' is not computed; there are \['ndcg@20'\]"):
        fit(
            model,
            optimizer,
            _step(model),
            lambda _e: batches,
            lambda: {"ndcg@20": 0.1},
            epochs=2,
            patience=1,
            metric="ndcg@50",
        )


def test_batches_are_requested_per_epoch() -> None:
    model, optimizer, batches = _regression()
    asked: list[int] = []

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        asked.append(epoch)
        return iter(batches[:1])

    state = fit(
        model,
        optimizer,
        _step(model),
        epoch_batches,
        lambda: {"m": 0.0},
        epochs=3,
        patience=5,
        metric="m",
        max_steps_per_epoch=1,
    )
    assert asked == [0, 1, 2] and state.step == 3


def test_the_loop_hands_freed_heap_back_every_n_steps_and_after_validation(monkeypatch) -> None:
    from raymm.training import loop

    assert loop.release_freed_heap() is (loop._libc() is not None)  # glibc here: True
    calls: list[int] = []
    model, optimizer, batches = _regression()  # 4 batches an epoch
    monkeypatch.setattr(loop, "release_freed_heap", lambda: calls.append(len(calls)) or True)
    order: list[str] = []

    def validate() -> dict[str, float]:
        order.append(f"validate after {len(calls)} trims")
        return {"m": 0.0}

    state = fit(
        model,
        optimizer,
        _step(model),
        lambda _e: batches,
        validate,
        epochs=2,
        patience=5,
        metric="m",
        heap_trim_every=3,
    )
    # Steps 3 and 6 trim, and each validation is followed by one: 2 + 2.
    assert state.step == 8 and len(calls) == 4
    assert order == ["validate after 1 trims", "validate after 3 trims"]
    calls.clear()
    fit(model, optimizer, _step(model), lambda _e: batches, validate, epochs=1, patience=5, metric="m")
    assert calls == []  # heap_trim_every None: never
