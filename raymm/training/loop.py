"""The one training loop, plain PyTorch: epochs, steps, validation, early stopping, best weights.

Both stages (two-tower, ranker) and the benchmarks run :func:`fit`; Ray Train wraps it
(:mod:`raymm.training.ray_runner`) by passing the batches of its dataset shard, a validation that
runs on rank 0 and is broadcast, and an ``on_epoch`` that reports and checkpoints. Everything
the loop carries from epoch to epoch is in :class:`LoopState`, so a run resumes from a
checkpoint (model, optimizer, state) exactly where it stopped.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only: musl and macOS have none)
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_heap() -> bool:
    """Hand freed memory back to the OS: Arrow's pool's unused pages (``release_unused``; Ray
    Data's blocks live there) and the C heap's free pages (glibc ``malloc_trim(0)``, every arena).

    Neither allocator returns what a process frees at once. A training step's tensors change shape
    with the batch (its unique items), and the worker's memory climbed step after step, though the
    number of live tensors stays the same (bench/train_memory.py). Returns False where the C
    library is not glibc (Arrow's pool is still released).
    """
    arrow = sys.modules.get("pyarrow")  # imported by whoever reads Arrow data; never imported here
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@dataclass
class StepOutput:
    """What one training step returns: the ``loss`` to back-propagate, the batch's example count
    ``n``, and scalars to average over the epoch (``logs``, e.g. the loss's parts)."""

    loss: Tensor
    n: int
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopState:
    """The loop's state between epochs: the last finished ``epoch`` (-1 before the first), global
    ``step``, the best validation score, its epoch and weights, epochs without improvement, and
    one row of metrics per epoch. ``resumed_from`` is the epoch a restored run continued after."""

    epoch: int = -1
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_weights: dict[str, Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = -1


@dataclass
class Checkpoint:
    """What a checkpoint holds: model and optimizer state dicts and the loop state."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    state: LoopState

    def save(self, path: str) -> None:
        """Write the checkpoint to the local file ``path``."""
        torch.save({"model": self.model, "optimizer": self.optimizer, "state": vars(self.state)}, path)

    @classmethod
    def load(cls, path: str, device: torch.device | str = "cpu") -> Checkpoint:
        """Read a checkpoint written by :meth:`save`: tensors and plain values only (never
        unpickled objects: whoever can write the training storage must not run code here)."""
        saved = torch.load(path, map_location=device, weights_only=True)
        return cls(saved["model"], saved["optimizer"], LoopState(**saved["state"]))


@dataclass
class RunHooks:
    """Test hooks, never production settings: fail once at a global ``fail_at_step`` (fault
    tolerance tests; ``fail`` decides whether to raise, e.g. once per run), and cut epochs to
    ``max_steps_per_epoch`` steps."""

    fail_at_step: int | None = None
    max_steps_per_epoch: int | None = None


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection hook (tests only)."""


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_step: Callable[[Any], StepOutput],
    batches: Callable[[int], Iterable[Any]],
    validate: Callable[[], dict[str, float]],
    *,
    epochs: int,
    patience: int,
    metric: str,
    state: LoopState | None = None,
    on_epoch: Callable[[dict[str, float], LoopState], None] | None = None,
    before_step: Callable[[LoopState], None] | None = None,
    max_steps_per_epoch: int | None = None,
    world_size: int = 1,
    heap_trim_every: int | None = None,
) -> LoopState:
    """Train ``model`` for up to ``epochs`` epochs, stopping after ``patience`` epochs whose
    ``validate()[metric]`` did not beat the best; returns the final :class:`LoopState`.

    Each epoch: ``model.train()``, then for every batch of ``batches(epoch)`` one
    ``train_step(batch)``, zero_grad, backward, optimizer step; then ``validate()`` (its metrics
    join the epoch's row with a ``val_`` prefix), the best weights kept on CPU, and ``on_epoch``
    (report, checkpoint). ``state`` resumes a run after its last finished epoch. Every
    ``heap_trim_every`` steps, and after each validation, :func:`release_freed_heap`. Raises
    :class:`KeyError` naming the metrics there are if ``metric`` is not among them.
    """
    state = state or LoopState()
    for epoch in range(state.epoch + 1, epochs):
        started, seen, n_steps = time.perf_counter(), 0, 0
        sums: dict[str, float] = {}
        model.train()
        for batch in batches(epoch):
            if max_steps_per_epoch is not None and n_steps >= max_steps_per_epoch:
                break
            if before_step is not None:
                before_step(state)
            output = train_step(batch)
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            state.step += 1
            n_steps += 1
            if heap_trim_every and state.step % heap_trim_every == 0:
                release_freed_heap()
            seen += output.n
            for key, value in {"train_loss": float(output.loss.detach()), **output.logs}.items():
                sums[key] = sums.get(key, 0.0) + value
        elapsed = time.perf_counter() - started
        validation = validate()
        if heap_trim_every:
            release_freed_heap()
        if metric not in validation:
            raise KeyError(f"validation metric {metric!r} is not computed; there are {sorted(validation)}")
        score = float(validation[metric])
        if score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            state.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        row = {
            "epoch": float(epoch),
            **{key: total / max(n_steps, 1) for key, total in sums.items()},
            "samples_per_s": seen * world_size / max(elapsed, 1e-9),
            "resumed_from_epoch": float(state.resumed_from),
            **{f"val_{k}": float(v) for k, v in validation.items()},
        }
        state.history.append(row)
        if on_epoch is not None:
            on_epoch(row, state)
        if state.bad_epochs >= patience:
            break
    return state


def best_row(state: LoopState) -> dict[str, float]:
    """The history row of the best epoch ({} if none)."""
    return next((row for row in state.history if int(row["epoch"]) == state.best_epoch), {})
