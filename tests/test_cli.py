"""The console script: exit codes, clear errors without tracebacks, dry runs, summaries."""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from raymm.cli import build_parser, main
from raymm.data import io
from raymm.data.dataset import split_by_time, write_dataset
from tests.conftest import make_interactions, make_items
from tests.workflows.test_extract import mmrec_source

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script as a user would."""
    script = Path(sys.executable).with_name("raymm")
    return subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=300, cwd=ROOT)


def _dataset(path: Path) -> str:
    parts, _ = split_by_time(make_interactions())
    write_dataset(str(path), make_items(), parts, {"name": "t"})
    return str(path)


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.parquet"))}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands ``parser`` registers, by name (argparse keeps them in its subparsers action)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _listed(help_text: str) -> list[str]:
    """The command names a help text lists: argparse indents each by 4 spaces under the metavar."""
    return re.findall(r"^    (\S+)", help_text, flags=re.MULTILINE)


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command the parser registers, and every subcommand of a command that has them
    (``data``, ``deploy``), is listed in the help that ``raymm [COMMAND] --help`` prints."""
    commands = _subcommands(build_parser())
    assert {"data", "train", "quickstart", "serve", "consume"} <= set(commands)
    to_check: list[tuple[list[str], dict[str, argparse.ArgumentParser]]] = [([], commands)]
    to_check += [([name], _subcommands(sub)) for name, sub in commands.items() if _subcommands(sub)]
    assert [argv for argv, _ in to_check] == [[], ["data"], ["deploy"]]
    for argv, registered in to_check:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0
        listed = _listed(capsys.readouterr().out)
        shown = " ".join(["raymm", *argv, "--help"])
        assert listed == list(registered), f"{shown} lists {listed}; the parser registers {list(registered)}"


def test_synth_twice_gives_byte_identical_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        code = main(
            ["data", "synth", "--size", "tiny", "--seed", "7", "--out", str(tmp_path / name), "--quiet"]
        )
        assert code == 0
    summary = capsys.readouterr().out
    assert "raymm data synth" in summary and "items rows" in summary and str(tmp_path / "a") in summary
    digests = _digests(tmp_path / "a")
    assert {"items.parquet", "train.parquet", "validation.parquet", "test.parquet", "stream.parquet"} <= set(
        digests
    )
    assert digests == _digests(tmp_path / "b")
    assert main(["data", "validate", str(tmp_path / "a"), "--quiet"]) == 0


def test_dry_run_prints_the_plan_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "root"
    code = main(
        [
            "quickstart",
            "--config",
            "configs/quickstart.yaml",
            "--set",
            "synth.size=tiny",
            "--out",
            str(out),
            "--dry-run",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "plan for `raymm quickstart`" in printed and f"{out}/data" in printed
    assert f"{out}/model" in printed and f"{out}/report" in printed  # trains, then the ablation
    assert "size: tiny" in printed
    assert not out.exists()


def test_validate_exits_one_and_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _dataset(tmp_path / "d")
    interactions = make_interactions().to_pydict()
    interactions["item_id"][5] = "ghost"
    io.write_table(pa.table(interactions), f"{path}/test.parquet")
    code = main(["data", "validate", path, "--out", str(tmp_path / "report"), "--quiet"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "test.parquet: item_id not in items.parquet (e.g. ['ghost']) at row 5" in printed
    report = io.read_json(str(tmp_path / "report" / "validation.json"))
    assert report["ok"] is False and report["problems"][0]["rows"] == [5]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["data", "validate", "does/not/exist"], "dataset directory not found: does/not/exist"),
        (["data", "synth", "--config", "no/such.yaml"], "config file not found: no/such.yaml"),
        (["data", "synth", "--set", "synth.colour=red", "--dry-run"], "unknown key 'synth.colour'"),
        (["data", "import", "--format", "movielens"], "needs --format and --source"),
        (["data", "import", "--format", "movielens", "--source", "no/such/dir"], "no/such/dir"),
    ],
)
def test_bad_input_is_one_clear_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("raymm: error: ") and expected in err
    assert "Traceback" not in err


def test_console_script_reports_a_bad_parquet_without_traceback(tmp_path: Path) -> None:
    path = _dataset(tmp_path / "d")
    io.write_table(make_items().drop(["item_id"]), f"{path}/items.parquet")
    result = _run("data", "validate", path, "--quiet")
    assert result.returncode == 1
    assert "items.parquet: missing required column(s) ['item_id']" in result.stdout
    assert "Traceback" not in result.stderr


def test_console_script_reports_an_unknown_yaml_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    shutil.copy(ROOT / "configs" / "quickstart.yaml", config)
    config.write_text(config.read_text() + "\ntrain_epochs: 3\n")
    result = _run("quickstart", "--config", str(config), "--dry-run")
    assert result.returncode == 2
    assert "unknown key 'train_epochs'" in result.stderr and "Traceback" not in result.stderr


def test_console_script_reports_a_malformed_mmrec_row(tmp_path: Path) -> None:
    source = tmp_path / "mm"
    source.mkdir()
    (source / "toy.inter").write_text(
        "userID\titemID\trating\ttimestamp\tx_label\n0\t0\t5\t100\t0\n1\tseven\t4\t101\t0\n"
    )
    result = _run(
        "data",
        "import",
        "--format",
        "mmrec",
        "--source",
        str(source),
        "--name",
        "toy",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 2, result.stderr
    assert "toy.inter" in result.stderr and "line 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "dataset.json").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["extract", "--incremental"], "encode image with efficientnet_lite0"),
        (["train", "--set", "train.run.num_workers=2"], "Ray Train: 2 worker(s)"),
        (["data", "export", "--data", "d"], "export d as mmrec"),
        (["evaluate", "--model", "m"], "rank m, popularity and content at K=[10, 20, 50]"),
        (["evaluate", "--ablation"], "Ray Train contrastive+gated"),
    ],
)
def test_every_stage_has_a_dry_run(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*argv, "--config", "configs/quickstart.yaml", "--out", str(tmp_path / "o"), "--dry-run"])
    assert code == 0
    assert expected in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


def test_quiet_stops_forwarding_ray_worker_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--config", "configs/quickstart.yaml", "--out", str(tmp_path), "--dry-run"]
    assert main(args) == 0
    assert "log_to_driver: true" in capsys.readouterr().out
    assert main([*args, "--quiet"]) == 0
    assert "log_to_driver: false" in capsys.readouterr().out


def test_import_prints_split_users_and_one_line_per_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "mm"
    source.mkdir()
    (source / "toy.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n1\t1\t0\n0\t1\t2\n2\t0\t2\n")
    np.save(source / "text_feat.npy", np.ones((3, 3), np.float32))  # features, so no warning of their absence
    out = tmp_path / "data"
    assert (
        main(["data", "import", "--format", "mmrec", "--source", str(source), "--out", str(out), "--quiet"])
        == 0
    )
    captured = capsys.readouterr()
    assert "test users" in captured.out
    assert "2 (1 with an empty history, 1 without train events)" in captured.out
    assert f"2 (below, and in {out}/dataset.json)" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("raymm: warning: ")]
    assert len(warnings) == 2
    assert "no timestamp column in" in warnings[0] and "toy.inter" in warnings[0]
    assert warnings[1].startswith("raymm: warning: degenerate split: the test split has 2 users")
    assert "1 of 2 test users (50%)" not in captured.err  # exactly half is not more than half


def _mmrec_with_features(tmp_path: Path) -> Path:
    """:func:`~tests.workflows.test_extract.mmrec_source` imported to <tmp>/o/data; returns the dataset."""
    source = mmrec_source(tmp_path)
    data = tmp_path / "o" / "data"
    assert (
        main(["data", "import", "--format", "mmrec", "--source", str(source), "--out", str(data), "--quiet"])
        == 0
    )
    return data


def test_after_an_mmrec_import_extract_points_at_the_features_and_train_uses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _mmrec_with_features(tmp_path)
    imported = f"{data}/features.parquet"
    capsys.readouterr()
    common = ["--set", f"out={tmp_path / 'o'}", "--data", str(data), "--quiet"]

    assert main(["extract", *common]) == 0
    printed = capsys.readouterr().out
    assert f"already imported: {imported} (text, image, audio: precomputed:mmrec)" in printed
    assert not (tmp_path / "o" / "features").exists()

    import raymm.training.trainer

    given: list[str] = []

    def fake_train(config: object, data_dir: str, features_dir: str, out: str) -> SimpleNamespace:
        given.append(features_dir)
        manifest = SimpleNamespace(model_version="v", metrics={"validation": {}})
        return SimpleNamespace(manifest=manifest, history=[], elapsed_s=0.0)

    monkeypatch.setattr(raymm.training.trainer, "train", fake_train)
    assert main(["train", *common]) == 0
    assert given == [imported]
    printed = capsys.readouterr().out
    assert (
        f"{tmp_path / 'o' / 'features'} does not exist, so using the features imported with the dataset"
        in printed
    )


def test_the_cli_and_the_python_api_call_the_same_functions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``raymm.<stage>`` is the workflow ``raymm <stage>`` calls, with its flags as keyword paths."""
    import raymm
    import raymm.workflows.evaluate
    import raymm.workflows.extract
    import raymm.workflows.train
    from raymm.console import StageResult

    for name, module in (
        ("extract", raymm.workflows.extract),
        ("train", raymm.workflows.train),
        ("train_ranker", raymm.workflows.train),
        ("evaluate", raymm.workflows.evaluate),
    ):
        # Read as a user does, after the training subpackage is imported: the subpackage is
        # raymm.training, so it cannot hide the function raymm.train (it did while both were "train").
        import raymm.training.trainer

        assert getattr(raymm, name) is getattr(module, name)
    assert "build_app" in raymm.__all__ and raymm.build_app.__module__ == "raymm.serve.app"

    class Done(StageResult):
        title = "train"

        def summary_rows(self) -> list[tuple[str, object]]:
            return [("called", "yes")]

    given: list[dict[str, object]] = []

    def recorded(config: object, **paths: object) -> Done:
        given.append({k: v for k, v in paths.items() if k != "say"})
        return Done()

    monkeypatch.setattr(raymm.workflows.train, "train", recorded)
    assert main(["train", "--data", "d", "--features", "f", "--out", str(tmp_path / "m"), "--quiet"]) == 0
    assert given == [{"data": "d", "features": "f", "out": str(tmp_path / "m")}]
    assert re.search(r"called\s+yes", capsys.readouterr().out)
