"""`make bench` runs every benchmark behind a design.md target, and `make bench QUICK=1` their quick modes.

A benchmark says which target of design.md section 4 it measures with a module-level
``DESIGN_TARGET``; these tests read the scripts (without importing them) and what ``make -n``
would run, so a new benchmark cannot be left out of ``make bench`` nor lack a ``--quick`` mode.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
COMMAND = re.compile(r"bench/(\w+)\.py\b(.*)$")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def module_constants(path: Path) -> dict[str, object]:
    """The module-level constants of a script assigned a literal (``NAME = "..."``)."""
    constants = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
    return constants


def has_quick_flag(path: Path) -> bool:
    """Whether the script's argument parser takes ``--quick``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
            and any(isinstance(arg, ast.Constant) and arg.value == "--quick" for arg in node.args)
        ):
            return True
    return False


def target_benchmarks() -> dict[str, str]:
    """Script name -> the design.md target it declares (``DESIGN_TARGET``)."""
    found = {}
    for path in sorted(BENCH.glob("*.py")):
        target = module_constants(path).get("DESIGN_TARGET")
        if target is not None:
            found[path.stem] = str(target)
    return found


def make_bench(*variables: str) -> list[tuple[str, str]]:
    """(script, its arguments) of every benchmark ``make bench`` would run, in order (``make -n``)."""
    # -o: the venv is taken as made, so make prints only the bench recipe and installs nothing.
    result = subprocess.run(
        ["make", "-n", "-s", "-o", ".venv/.installed-stamp", "bench", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        (match.group(1), match.group(2).strip())
        for line in result.stdout.splitlines()
        if (match := COMMAND.search(line))
    ]


def test_every_design_target_has_a_benchmark() -> None:
    targets = set(target_benchmarks().values())
    assert targets == {"Extraction", "Retrieval", "Serving", "Freshness", "Ingestion", "Quality"}


def test_make_bench_runs_every_target_benchmark_in_full() -> None:
    commands = make_bench()
    assert sorted(name for name, _ in commands) == sorted(target_benchmarks())
    assert all("--quick" not in arguments for _, arguments in commands), commands


def test_make_bench_quick_runs_every_target_benchmarks_quick_mode() -> None:
    benchmarks = target_benchmarks()
    commands = make_bench("QUICK=1")
    assert sorted(name for name, _ in commands) == sorted(benchmarks)
    assert all(arguments == "--quick" for _, arguments in commands), commands
    without = [name for name in benchmarks if not has_quick_flag(BENCH / f"{name}.py")]
    assert without == [], f"benchmarks behind a design.md target without --quick: {without}"
