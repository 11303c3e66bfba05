"""The thin Ray Train wrapper around :func:`raymm.train.loop.fit`, shared by both stages.

Driver side, :func:`run_on_ray` starts a ``TorchTrainer`` with the run's scaling, failure
handling and checkpoint retention, and returns the last checkpoint. Worker side,
:class:`WorkerRun` gives the stage's per-worker function what it needs around ``fit``: rank,
world size and device, the restored checkpoint, the epoch batches of its dataset shard, a
validation that runs on rank 0 and is broadcast, ``on_epoch`` (report every rank, checkpoint on
rank 0) and the fault-injection hook of the tests.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.errors import RaymmError
from raymm.train.loop import Checkpoint, InjectedFailure, LoopState, RunHooks

CHECKPOINT_FILE = "state.pt"
INJECTED_FAILURE_MARKER = ".injected-failure-done"


class TrainingError(RaymmError):
    """The Ray Train run failed (after its allowed restarts)."""


def deterministic() -> None:
    """Deterministic kernels (invariant 6): with two torch threads the same seed gave weights
    1.8e-5 apart after three epochs, and identical ones with these; an op without a deterministic
    kernel warns instead of failing. On CUDA cuBLAS needs its workspace pinned too."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


class WorkerRun:
    """One Ray Train worker's view of the run; build it first thing in the per-worker function.

    ``loop_config`` is what :func:`run_on_ray` passed: ``config`` (the whole config as JSON),
    ``storage`` (the run's directory) and ``hooks`` (:class:`RunHooks` as a dict).
    """

    def __init__(self, loop_config: dict[str, Any]) -> None:
        import ray.train
        import ray.train.torch

        self.config = RaymmConfig.model_validate(loop_config["config"])
        self.storage: str = loop_config["storage"]
        self.hooks = RunHooks(**loop_config.get("hooks", {}))
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        train = self.config.train
        torch.set_num_threads(train.torch_threads or max(1, int(train.cpus_per_worker)))
        deterministic()

    def prepare(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped for data parallelism (DDP; unused parameters allowed: a fusion's
        "empty item" vector gets no gradient in a batch where every item has a modality)."""
        import ray.train.torch

        return ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": True}
        )

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> LoopState | None:
        """Load the latest checkpoint into ``model`` and ``optimizer``; its loop state, or None."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            saved = Checkpoint.load(str(Path(directory) / CHECKPOINT_FILE), self.device)
        model.load_state_dict(saved.model)
        optimizer.load_state_dict(saved.optimizer)
        saved.state.resumed_from = saved.state.epoch
        return saved.state

    def batches(self, batch_size: int) -> Callable[[int], Iterable[Any]]:
        """Epoch -> this worker's batches of the ``train`` dataset shard (dicts of CPU tensors)."""
        import ray.train

        shard = ray.train.get_dataset_shard("train")

        def epoch_batches(epoch: int) -> Iterable[Any]:
            return shard.iter_torch_batches(batch_size=batch_size, drop_last=self.world > 1)

        return epoch_batches

    def on_rank0(self, validate: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
        """``validate`` run on rank 0 only, its result broadcast to every rank."""
        import torch.distributed as dist

        def validated() -> dict[str, float]:
            result = validate() if self.rank == 0 else {}
            if self.world > 1:
                shared = [result]
                dist.broadcast_object_list(shared, src=0)
                result = shared[0]
            return result

        return validated

    def reporter(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> Callable[[dict[str, float], LoopState], None]:
        """``on_epoch`` for :func:`fit`: every rank reports the epoch's row; rank 0 attaches the checkpoint."""
        import ray.train

        def report(row: dict[str, float], state: LoopState) -> None:
            with tempfile.TemporaryDirectory() as directory:
                checkpoint = None
                if self.rank == 0:
                    Checkpoint(model.state_dict(), optimizer.state_dict(), state).save(
                        str(Path(directory) / CHECKPOINT_FILE)
                    )
                    checkpoint = ray.train.Checkpoint.from_directory(directory)
                ray.train.report(row, checkpoint=checkpoint)

        return report

    def before_step(self, state: LoopState) -> None:
        """Fault-injection hook (tests): fail once at ``hooks.fail_at_step`` on rank 0 (a marker
        file under the run's storage keeps the restarted run going)."""
        if self.hooks.fail_at_step is None or state.step != self.hooks.fail_at_step or self.rank != 0:
            return
        marker = io.join(self.storage, INJECTED_FAILURE_MARKER)
        if io.exists(marker):
            return
        io.write_json({"step": state.step}, marker)
        raise InjectedFailure(f"injected worker failure at step {state.step} (RunHooks.fail_at_step)")


def run_on_ray(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    config: RaymmConfig,
    name: str,
    dataset: Any,
    what: str,
    hooks: RunHooks | None = None,
) -> Checkpoint:
    """Run ``loop`` with Ray Train as run ``name`` under ``train.storage_path``; return its last checkpoint.

    The run's scaling (``train.num_workers``, ``use_gpu``, ``cpus_per_worker``), failure handling
    (``max_failures``) and checkpoint retention are the same for every stage. ``loop_config``
    gains ``config`` (the whole config, as JSON), ``storage`` (the run's directory) and
    ``hooks``. ``dataset`` is sharded to the workers as ``"train"``. Raises
    :class:`TrainingError` naming ``what`` if the run fails beyond its restarts or leaves no
    checkpoint.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    storage = io.absolute(config.train.storage_path or config.stage_dir("train"))
    storage_fs, storage_path = io.resolve(storage)
    io.makedirs(storage)
    trainer = TorchTrainer(
        loop,
        train_loop_config={
            **loop_config,
            "config": config.model_dump(mode="json", by_alias=True),
            "storage": io.join(storage, name),
            "hooks": asdict(hooks or RunHooks()),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.train.num_workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": dataset},
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors in its own types; surface one clear error
        raise TrainingError(f"{what} {name!r} failed: {exc}") from exc
    if result.checkpoint is None:
        raise TrainingError(f"{what} {name!r} produced no checkpoint")
    with result.checkpoint.as_directory() as directory:
        return Checkpoint.load(str(Path(directory) / CHECKPOINT_FILE))


def shuffled_examples(table: Any, seed: int) -> Any:
    """``table`` as a Ray Dataset that every epoch reads in a new order, reproducible from ``seed``.

    A global shuffle that Ray Data re-runs each epoch with a seed derived from ``seed`` and the
    epoch. One fixed permutation with a local shuffle buffer repeats nearly the same order every
    epoch, and the model overfits to it (see bench/quality_synth.py). The dataset's own progress
    bars and execution notices are off: they would print for every epoch from inside the workers.
    """
    import ray.data

    shuffle = ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)
    dataset = ray.data.from_arrow(table).random_shuffle(seed=shuffle)
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    return dataset
