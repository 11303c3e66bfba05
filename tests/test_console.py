"""raymm.console: Ray's output to a log file unless verbose; stage lines, progress and summary for people."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from raymm import console


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[console.ConsoleRouting]:
    routing = console.configure_logging(str(tmp_path / "logs" / "raymm.log"), verbose=False)
    yield routing
    routing.close()


def _console_handler_on(name: str) -> logging.Handler:
    """A console handler like Ray's own, on ``name`` (what ``import ray`` installs on ``ray``)."""
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger(name).addHandler(handler)
    return handler


def test_ray_info_goes_to_the_log_file_not_the_console(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    ray_handler = _console_handler_on("ray.data")
    routing = console.configure_logging(str(tmp_path / "logs" / "raymm.log"), verbose=False)
    try:
        logging.getLogger("ray.data").info("Execution plan of Dataset d_0: Input -> MapBatches")
        logging.getLogger("ray.data").warning("a warning a person should see")
    finally:
        routing.close()
        logging.getLogger("ray.data").removeHandler(ray_handler)
    err = capfd.readouterr().err
    assert "Execution plan" not in err
    assert "a warning a person should see" in err
    log = (tmp_path / "logs" / "raymm.log").read_text()
    assert "Execution plan of Dataset d_0" in log
    assert "a warning a person should see" in log


def test_child_logger_reaches_the_file_once(routed: console.ConsoleRouting) -> None:
    logging.getLogger("ray.train").info("Reporting training result 1")
    assert routed.log_file is not None
    assert Path(routed.log_file).read_text().count("Reporting training result 1") == 1


def test_native_stderr_goes_to_the_file_and_python_stderr_to_the_console(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    # Routed inside the test: pytest points descriptor 2 back at its capture between setup and call.
    routing = console.configure_logging(str(tmp_path / "raymm.log"), verbose=False)
    try:
        os.write(2, b"[E core_worker.cc:2465] constructor arguments in the object store\n")
        print("raymm: error: something a person must read", file=sys.stderr)
    finally:
        routing.close()
    err = capfd.readouterr().err
    assert "core_worker.cc" not in err
    assert "raymm: error: something a person must read" in err
    assert "core_worker.cc:2465" in (tmp_path / "raymm.log").read_text()


def test_cli_like_process_keeps_people_lines_and_logs_native_lines(tmp_path: Path) -> None:
    """A real process (no pytest capture): sys.stderr stays on the console, descriptor 2 goes to the log."""
    log = tmp_path / "logs" / "raymm.log"
    script = (
        "import os, sys; from raymm import console; "
        f"r = console.configure_logging({str(log)!r}, verbose=False); "
        "os.write(2, b'[E core_worker.cc:2465] constructor arguments\\n'); "
        "print('raymm: error: for a person', file=sys.stderr); r.close(); "
        "os.write(2, b'after close\\n')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert done.stderr.splitlines() == ["raymm: error: for a person", "after close"]
    assert "core_worker.cc:2465" in log.read_text()


def test_warnings_go_to_the_file(capfd: pytest.CaptureFixture, routed: console.ConsoleRouting) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("ExecutionOptions.exclude_resources is deprecated", DeprecationWarning, stacklevel=1)
    assert "deprecated" not in capfd.readouterr().err
    assert routed.log_file is not None
    assert "exclude_resources is deprecated" in Path(routed.log_file).read_text()


def test_verbose_leaves_ray_on_the_console(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    ray_handler = _console_handler_on("ray.data")
    routing = console.configure_logging(str(tmp_path / "raymm.log"), verbose=True)
    try:
        logging.getLogger("ray.data").setLevel(logging.INFO)
        logging.getLogger("ray.data").info("Execution plan of Dataset d_1")
        os.write(2, b"native line\n")
    finally:
        routing.close()
        logging.getLogger("ray.data").removeHandler(ray_handler)
    err = capfd.readouterr().err
    assert "Execution plan of Dataset d_1" in err
    assert "native line" in err
    assert not (tmp_path / "raymm.log").exists()


def test_close_restores_stderr_and_handlers(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    ray_handler = _console_handler_on("ray")
    before = sys.stderr
    routing = console.configure_logging(str(tmp_path / "raymm.log"), verbose=False)
    assert ray_handler.level == console.RAY_CONSOLE_LEVEL
    routing.close()
    logging.getLogger("ray").removeHandler(ray_handler)
    assert sys.stderr is before
    assert ray_handler.level == logging.NOTSET
    assert console.current() is None
    os.write(2, b"back on the console\n")
    assert "back on the console" in capfd.readouterr().err


def test_log_file_for_local_and_object_storage(tmp_path: Path) -> None:
    assert console.log_file_for(str(tmp_path)) == str(tmp_path / "logs" / "raymm.log")
    remote = console.log_file_for("s3://bucket/run")
    assert not remote.startswith("s3://") and remote.endswith(".log")


def test_stage_prints_its_line_and_timing() -> None:
    out = io.StringIO()
    with console.Stage(3, 6, "extracting features", stream=out) as stage:
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "[3/6] extracting features ..."
    assert lines[1] == f"[3/6] extracting features: done in {stage.elapsed_s:.1f} s"


def test_stage_says_it_failed_and_lets_the_error_through() -> None:
    out = io.StringIO()
    with pytest.raises(ValueError, match="bad"), console.Stage(1, 2, "training", stream=out):
        raise ValueError("bad")
    assert "[1/2] training: failed after" in out.getvalue()


def test_progress_off_a_terminal_prints_a_few_whole_lines() -> None:
    out = io.StringIO()  # not a TTY
    items = list(console.progress(range(100), desc="synth users", unit="blocks", stream=out))
    assert items == list(range(100))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("(")[-1] for line in lines[:3]] == ["25%)", "50%)", "75%)"]
    assert lines[-1].startswith("  synth users: 100/100 blocks in ")
    assert len(lines) == 4


def test_progress_update_by_hand_and_disabled() -> None:
    out = io.StringIO()
    bar = console.progress(total=3, desc="import", unit="steps", stream=out)
    for _ in range(3):
        bar.update(1)
    bar.close()
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("  import: 3/3 steps in ")
    quiet = io.StringIO()
    list(console.progress(range(5), desc="x", enabled=False, stream=quiet))
    assert quiet.getvalue() == ""


def test_summary_block() -> None:
    out = io.StringIO()
    console.summary("extract", [("dataset", "/d"), ("items encoded this run", "240")], 20.14, stream=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == lines[-1] == "=" * 72
    assert lines[1] == "raymm extract  (20.1 s)"
    assert lines[3] == "  dataset                 /d"
    assert lines[4] == "  items encoded this run  240"


def test_local_instance_runs_without_the_preemption_watcher(ray_session: None) -> None:
    """init_ray's local instance hands its workers RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0."""
    import ray

    @ray.remote(num_cpus=0)
    def watcher_setting() -> str | None:
        return os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")

    assert ray.get(watcher_setting.remote()) == "0"


def test_ray_data_issue_detector_advice_stays_in_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from raymm.console import _advisory_only_in_file

    advice = logging.LogRecord(
        "ray.data._internal.issue_detection.issue_detector_manager",
        logging.WARNING,
        "",
        0,
        "uses 800MiB",
        None,
        None,
    )
    failure = logging.LogRecord(
        "ray.data._internal.issue_detection.x", logging.ERROR, "", 0, "broken", None, None
    )
    other = logging.LogRecord("ray.data", logging.WARNING, "", 0, "a real warning", None, None)
    assert not _advisory_only_in_file(advice)
    assert _advisory_only_in_file(failure) and _advisory_only_in_file(other)
