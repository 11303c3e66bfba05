"""``raymm submit`` without a cluster: the job it builds, the exit code it returns for each end of
a job, Ctrl-C's question, and its input errors. A stand-in for Ray's job client records what would
have reached the cluster (the two-node run is tests/workflows/test_submit_cluster.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import raymm
from raymm.cli import main
from raymm.workflows import submit

ADDRESS = "http://head:8265"


@dataclass
class Info:
    """The fields of Ray's ``JobDetails`` that ``raymm submit`` reads."""

    status: str
    message: str | None = None
    driver_exit_code: int | None = None


class FakeJobs:
    """Ray's job client as seen from ``raymm submit``: takes one job, streams ``logs``, ends as ``final``.

    ``interrupt``: Ctrl-C arrives after the logs, while the job still runs.
    """

    def __init__(self, final: Info, logs: tuple[str, ...] = ("job says hello\n",), interrupt: bool = False):
        self.final, self.logs, self.interrupt = final, logs, interrupt
        self.submitted: list[dict[str, Any]] = []
        self.stopped: list[str] = []

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted.append(kwargs)
        return str(kwargs["submission_id"])

    def get_job_info(self, job_id: str) -> Info:
        return Info("RUNNING") if self.interrupt and not self.stopped else self.final

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        self.final = Info("STOPPED", "Job was intentionally stopped.")
        return True

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        for chunk in self.logs:
            yield chunk
        if self.interrupt:
            raise KeyboardInterrupt


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory holding a config, the current directory of the test."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("seed: 3\n")
    (tmp_path / "outside.yaml").write_text("seed: 4\n")
    monkeypatch.chdir(tmp_path)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


def _use(monkeypatch: pytest.MonkeyPatch, jobs: FakeJobs, answer: str = "") -> list[str]:
    """Route ``raymm submit`` to ``jobs``; Ctrl-C's question gets ``answer``. Returns the questions asked."""
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return answer

    monkeypatch.setattr(submit, "connect", lambda address: jobs)
    monkeypatch.setattr(submit, "_ask_terminal", ask)
    return asked


def test_the_job_runs_the_local_command_in_the_local_runtime_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = FakeJobs(Info("SUCCEEDED"))
    _use(monkeypatch, jobs)
    monkeypatch.setenv("RAYMM_TEST_TOKEN", "s3cret")
    code = main(
        [
            "submit",
            "--env",
            "RAYMM_TEST_TOKEN",
            "train",
            "--config",
            str(project / "configs" / "run.yaml"),  # absolute here, relative to the working dir there
            "--set",
            "train.epochs=1",
            "--address",  # submit's own options may follow the stage's
            ADDRESS,
            "--env",
            "LEVEL=2",
            "--out",
            "s3://bucket/run/model",
            "--set",
            "out=s3://bucket/run",
        ]
    )
    assert code == 0
    (job,) = jobs.submitted
    assert job["entrypoint"] == (
        "raymm train --config configs/run.yaml --set train.epochs=1 --out s3://bucket/run/model "
        "--set out=s3://bucket/run --set ray.address=auto"
    )
    env = job["runtime_env"]
    assert env["working_dir"] == str(project)
    assert env["py_modules"] == [str(Path(raymm.__file__).resolve().parent)]  # this machine's raymm
    assert env["env_vars"] == {"RAYMM_TEST_TOKEN": "s3cret", "LEVEL": "2"}
    assert ".venv" in env["excludes"] and ".git" in env["excludes"]
    assert job["submission_id"].startswith("raymm-train-")
    assert job["metadata"] == {"raymm_stage": "train", "raymm_version": raymm.__version__}
    captured = capsys.readouterr()
    assert "job says hello" in captured.out and "SUCCEEDED" in captured.out
    assert "s3cret" not in captured.out + captured.err  # the summary names variables, never values
    assert "warning" not in captured.err  # every path is on object storage


def test_cluster_raymm_leaves_the_code_to_the_nodes(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = FakeJobs(Info("SUCCEEDED"))
    _use(monkeypatch, jobs)
    assert main(["submit", "extract", "--address", ADDRESS, "--cluster-raymm", "--set", "out=s3://b/r"]) == 0
    assert "py_modules" not in jobs.submitted[0]["runtime_env"]


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (Info("SUCCEEDED", driver_exit_code=0), 0),
        (Info("FAILED", "Job entrypoint command failed with exit code 2, last available logs: ...", 2), 2),
        (Info("FAILED", "Job supervisor actor died", None), submit.EXIT_JOB_FAILED),
        (Info("STOPPED", "Job was intentionally stopped."), submit.EXIT_STOPPED),
    ],
)
def test_the_exit_code_is_the_jobs(
    final: Info,
    expected: int,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use(monkeypatch, FakeJobs(final))
    assert main(["submit", "evaluate", "--address", ADDRESS, "--set", "out=s3://b/r"]) == expected
    err = capsys.readouterr().err
    if expected:
        (line,) = [line for line in err.splitlines() if line.startswith("raymm: error: job raymm-evaluate-")]
        assert final.status in line and (final.message or "").split(",")[0] in line
        assert "last available logs" not in line  # streamed already, not repeated
    else:
        assert "error" not in err


def test_ctrl_c_stops_the_job_when_told_to(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = FakeJobs(Info("SUCCEEDED"), interrupt=True)
    asked = _use(monkeypatch, jobs, answer="y")
    assert main(["submit", "train", "--address", ADDRESS, "--set", "out=s3://b/r"]) == submit.EXIT_STOPPED
    (job_id,) = jobs.stopped
    assert asked and job_id in asked[0] and "[y/N]" in asked[0]
    assert f"job {job_id} STOPPED" in capsys.readouterr().err


def test_ctrl_c_leaves_the_job_running_by_default(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = FakeJobs(Info("SUCCEEDED"), interrupt=True)
    asked = _use(monkeypatch, jobs, answer="")
    assert main(["submit", "train", "--address", ADDRESS, "--set", "out=s3://b/r"]) == submit.EXIT_STOPPED
    assert asked and not jobs.stopped
    err = capsys.readouterr().err
    job_id = jobs.submitted[0]["submission_id"]
    assert f"job {job_id} goes on running" in err and f"ray job stop {job_id} --address {ADDRESS}" in err


def test_dry_run_prints_the_job_and_rays_own_command_and_submits_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(address: str) -> None:
        raise AssertionError("a dry run reached the cluster")

    monkeypatch.setattr(submit, "connect", unreachable)
    argv = ["submit", "extract", "--config", "configs/run.yaml", "--dry-run", "--env", "KEY=s3cret"]
    assert main([*argv, "--address", ADDRESS, "--set", "out=s3://b/r"]) == 0
    out = capsys.readouterr().out
    assert "ray job submit --address http://head:8265" in out and "--runtime-env-json" in out
    assert "-- raymm extract --config configs/run.yaml --set out=s3://b/r --set ray.address=auto" in out
    assert "s3cret" not in out and '"KEY": "***"' in out


def test_local_paths_are_named_in_a_warning(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, FakeJobs(Info("SUCCEEDED")))
    assert main(["submit", "train", "--address", ADDRESS, "--set", "out=s3://b/r", "--data", "data"]) == 0
    err = capsys.readouterr().err
    assert "raymm: warning: the job uses paths on each node's own disk (data data)" in err
    assert "checkpoints" not in err and "model" not in err  # those derive from out, on S3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--working-dir", "configs", "--config", "outside.yaml"], "is outside the working directory"),
        (["--config", "configs/none.yaml"], "config file not found: configs/none.yaml"),
        (["--env", "RAYMM_SURELY_UNSET"], "--env RAYMM_SURELY_UNSET: RAYMM_SURELY_UNSET is not set here"),
        (["--env", "=x"], "--env expects NAME or NAME=VALUE"),
        (["--working-dir", "nowhere"], "--working-dir nowhere is not a directory"),
    ],
)
def test_input_errors_exit_2_before_anything_is_submitted(
    argv: list[str],
    message: str,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = FakeJobs(Info("SUCCEEDED"))
    _use(monkeypatch, jobs)
    assert main(["submit", "train", "--address", ADDRESS, *argv]) == 2
    assert message in capsys.readouterr().err
    assert not jobs.submitted


def test_without_an_address_it_says_where_to_give_one(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "extract", "--set", "out=s3://b/r"]) == 2
    assert "needs the cluster's job API: --address http://HEAD:8265" in capsys.readouterr().err


def test_the_stages_own_arguments_are_checked_here(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "extract", "--address", ADDRESS, "--no-such-flag"])
    assert exit_info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_an_unreachable_cluster_is_an_input_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "extract", "--address", "http://127.0.0.1:9", "--set", "out=s3://b/r"]) == 2
    assert "no Ray job API at http://127.0.0.1:9" in capsys.readouterr().err
