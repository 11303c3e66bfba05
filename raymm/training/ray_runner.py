"""The thin Ray Train wrapper around :func:`raymm.training.loop.fit`, shared by both stages.

Driver side, :func:`run_on_ray` starts a ``TorchTrainer`` with the run's scaling, failure
handling and checkpoint retention, and returns the last checkpoint. Worker side,
:class:`WorkerRun` gives the stage's per-worker function what it needs around ``fit``: rank,
world size and device, the restored checkpoint, the epoch batches of its dataset shard, a
validation that runs on rank 0 and is broadcast, ``on_epoch`` (report every rank, checkpoint on
rank 0) and the fault-injection hook of the tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.errors import RaymmError
from raymm.training.loop import Checkpoint, InjectedFailure, LoopState, RunHooks
from raymm.training.settings import TrainRunConfig

CHECKPOINT_FILE = "state.pt"
INJECTED_FAILURE_MARKER = ".injected-failure-done"


class TrainingError(RaymmError):
    """The Ray Train run failed (after its allowed restarts)."""


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written whole to the run's storage; Ray never registers it."""


class RunInProgressError(TrainingError):
    """Another process is training the same run (same name, same storage) right now."""


#: Where runs whose storage is remote (S3, GCS) keep their lock: on the driver's machine.
REMOTE_LOCK_DIR = Path(tempfile.gettempdir()) / "raymm-run-locks"


def lock_path(storage_fs: pafs.FileSystem, storage_path: str, name: str) -> Path:
    """The lock file of run ``name``: in the storage's ``.locks/`` for local storage (every process
    that can write the run sees it, NFS included; out of the way of anything listing the runs),
    under :data:`REMOTE_LOCK_DIR` keyed by the run's URI for remote storage (so it guards against a
    second run from the same machine only)."""
    if isinstance(storage_fs, pafs.LocalFileSystem):
        return Path(storage_path) / ".locks" / f"{name}.lock"
    key = hashlib.sha256(f"{storage_fs.type_name}://{storage_path}/{name}".encode()).hexdigest()[:16]
    return REMOTE_LOCK_DIR / f"{name}-{key}.lock"


@contextlib.contextmanager
def run_lock(path: Path, name: str, where: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the run ``name`` (checkpoints in ``where``).

    Two runs with the same run key share a checkpoint directory: each would resume from, and
    prune, the other's checkpoints. The second raises :class:`RunInProgressError` naming the
    holder's process and host. The kernel drops the lock when its holder exits, however it
    exits, so a killed run leaves no stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunInProgressError(
                f"run {name!r} (checkpoints in {where}) is being trained by {holder} right now "
                f"(lock {path}); wait for it to finish, or train into another train.run.storage_path"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def deterministic() -> None:
    """Deterministic kernels (invariant 6): with two torch threads the same seed gave weights
    1.8e-5 apart after three epochs, and identical ones with these; an op without a deterministic
    kernel warns instead of failing. On CUDA cuBLAS needs its workspace pinned too."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


class WorkerRun:
    """One Ray Train worker's view of the run; build it first thing in the per-worker function.

    ``loop_config`` is what :func:`run_on_ray` passed: ``config`` (the whole config as JSON),
    ``run`` (the run's :class:`TrainRunConfig`, as JSON; :attr:`settings`), ``storage`` (the run's directory), ``storage_filesystem`` and ``storage_fs_path`` (the same
    directory as Ray Train writes it: the driver's filesystem, endpoint included) and ``hooks``
    (:class:`RunHooks` as a dict).
    """

    def __init__(self, loop_config: dict[str, Any]) -> None:
        import ray.train
        import ray.train.torch

        self.config = RaymmConfig.model_validate(loop_config["config"])
        self.settings = TrainRunConfig.model_validate(loop_config["run"])
        self.storage: str = loop_config["storage"]
        self.storage_filesystem: Any = loop_config["storage_filesystem"]
        self.storage_fs_path: str = loop_config["storage_fs_path"]
        self.hooks = RunHooks(**loop_config.get("hooks", {}))
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.set_num_threads(self.settings.torch_threads or max(1, int(self.settings.cpus_per_worker)))
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
        """``on_epoch`` for :func:`fit`: every rank reports the epoch's row; rank 0 attaches the checkpoint.

        Rank 0 writes a checkpoint only once Ray Train's controller has recorded every earlier report
        (its ``checkpoint_manager_snapshot.json``, what a resumed run reads). The controller takes
        reports when it polls the workers (every 2 s): without the wait, storage lost while the next
        checkpoint was written could also refuse the record of the previous one, whole in storage;
        the run then failed on the controller's write, and a resumed run did not know that checkpoint.
        It waits only while the previous epoch's report is not yet taken (epochs shorter than a poll).
        """
        import ray.train

        def report(row: dict[str, float], state: LoopState) -> None:
            with tempfile.TemporaryDirectory() as directory:
                if self.rank != 0:
                    ray.train.report(row)
                    return
                ray.train.get_all_reported_checkpoints(
                    consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
                )
                Checkpoint(model.state_dict(), optimizer.state_dict(), state).save(
                    str(Path(directory) / CHECKPOINT_FILE)
                )
                checkpoint = ray.train.Checkpoint.from_directory(directory)
                ray.train.report(row, checkpoint=checkpoint, checkpoint_upload_fn=self.write_checkpoint)

        return report

    def write_checkpoint(self, checkpoint: Any, directory_name: str) -> Any:
        """Copy ``checkpoint`` (a local directory) to ``directory_name`` in the run's directory on
        its storage, each file under a temporary name, closed, then moved into place; the Ray
        ``Checkpoint`` there. Raises :class:`CheckpointWriteError` naming the file when the storage
        refuses any step, so the report fails and Ray never registers the checkpoint.

        Ray's own upload (``pyarrow.fs.copy_files``) only logs a write the storage refused ("Error
        ignored when destroying file") and returns as if it had worked: Ray then registered a
        checkpoint whose weights never reached storage, the one a resumed run would load.
        """
        import ray.train

        filesystem = self.storage_filesystem
        target = posixpath.join(self.storage_fs_path, directory_name)
        local = Path(checkpoint.path)
        try:
            filesystem.create_dir(target)
            for file in sorted(f for f in local.rglob("*") if f.is_file()):
                destination = posixpath.join(target, file.relative_to(local).as_posix())
                temporary = f"{destination}.tmp-{uuid.uuid4().hex}"
                filesystem.create_dir(posixpath.dirname(destination))
                with filesystem.open_output_stream(temporary) as stream:
                    stream.write(file.read_bytes())
                filesystem.move(temporary, destination)
        except OSError as exc:
            raise CheckpointWriteError(
                f"writing checkpoint {io.join(self.storage, directory_name)} failed: {exc}"
            ) from exc
        return ray.train.Checkpoint(path=target, filesystem=filesystem)

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
    run: TrainRunConfig,
    name: str,
    dataset: Any,
    what: str,
    hooks: RunHooks | None = None,
) -> Checkpoint:
    """Run ``loop`` with Ray Train as run ``name`` under ``run.storage_path`` (default
    ``<out>/train``); return its last checkpoint.

    ``run`` sets the scaling (``num_workers``, ``use_gpu``, ``cpus_per_worker``, ``torch_threads``)
    and failure handling (``max_failures``); checkpoint retention is the same for every stage.
    ``loop_config`` gains ``config`` (the whole config, as JSON), ``run`` (as JSON), ``storage``
    (the run's directory) and ``hooks``. ``dataset`` is sharded to the workers as ``"train"``. Raises
    :class:`TrainingError` naming ``what`` and the run's storage location if the run fails beyond
    its restarts (storage that stops answering included) or leaves no checkpoint, and
    :class:`RunInProgressError` at once if another process is training the same run.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    storage = io.absolute(run.storage_path or config.stage_dir("train"))
    storage_fs, storage_path = io.resolve(storage)
    io.makedirs(storage)
    where = io.join(storage, name)
    with run_lock(lock_path(storage_fs, storage_path, name), name, where):
        trainer = TorchTrainer(
            loop,
            train_loop_config={
                **loop_config,
                "config": config.model_dump(mode="json", by_alias=True),
                "run": run.model_dump(mode="json"),
                "storage": io.join(storage, name),
                "storage_filesystem": storage_fs,
                "storage_fs_path": posixpath.join(storage_path, name),
                "hooks": asdict(hooks or RunHooks()),
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=run.num_workers,
                use_gpu=run.use_gpu,
                resources_per_worker={"CPU": run.cpus_per_worker},
            ),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
            datasets={"train": dataset},
        )
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray wraps worker errors in its own types; surface one clear error
            # Named, since Ray's message gives at most a bucket and key, often only a worker's traceback.
            raise TrainingError(f"{what} {name!r} (checkpoints in {where}) failed: {exc}") from exc
        if result.checkpoint is None:
            raise TrainingError(f"{what} {name!r} produced no checkpoint in {where}")
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
