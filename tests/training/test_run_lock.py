"""Two training runs with the same run key: the second is refused at once, and no lock outlives its holder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raymm.config import load_config
from raymm.training.ray_runner import REMOTE_LOCK_DIR, RunInProgressError, lock_path, run_lock, run_on_ray

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from raymm.training.ray_runner import run_lock
    with run_lock(Path(sys.argv[1]), "model-abc", "storage"):
        print("held", flush=True)
        time.sleep(120)
    """
)


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """A child process that holds the lock on ``path`` until killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    path = lock_path(pafs.LocalFileSystem(), str(tmp_path), "model-abc")
    assert path == tmp_path / ".locks" / "model-abc.lock"  # not among the runs' directories
    child = hold_lock(path)
    try:
        with (
            pytest.raises(
                RunInProgressError, match=rf"run 'model-abc' .* is being trained by pid {child.pid} on "
            ),
            run_lock(path, "model-abc", str(tmp_path / "model-abc")),
        ):
            pytest.fail("the lock was taken twice")
    finally:
        child.kill()
        child.wait()
    with run_lock(path, "model-abc", str(tmp_path / "model-abc")):  # SIGKILL released it
        assert path.read_text().startswith("pid ")
    with run_lock(path, "model-abc", "again"):  # and leaving the block released it too
        pass


def test_run_on_ray_takes_the_lock_before_starting_ray_train(tmp_path: Path) -> None:
    config = load_config(None, [f"out={tmp_path}"])
    storage = tmp_path / "train"
    storage.mkdir()
    child = hold_lock(storage / ".locks" / "model-abc.lock")
    try:
        # No Ray, no dataset: refused before a trainer is built.
        with pytest.raises(RunInProgressError, match=r"model-abc"):
            run_on_ray(lambda _: None, {}, config, config.train.run, "model-abc", None, "training")
    finally:
        child.kill()
        child.wait()


def test_remote_storage_locks_on_the_driver_machine_per_run() -> None:
    s3 = pafs.S3FileSystem(endpoint_override="http://127.0.0.1:9", anonymous=True)
    first = lock_path(s3, "bucket/train", "model-abc")
    assert first.parent == REMOTE_LOCK_DIR and first.name.startswith("model-abc-")
    assert first != lock_path(s3, "other-bucket/train", "model-abc")
    assert first == lock_path(s3, "bucket/train", "model-abc")
