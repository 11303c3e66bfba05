"""The package's import graph follows the flow: no cycle, eval never imports train, serve never
imports train or eval, the stream layer never imports Ray or serving, nothing under models/ or
the recommendation core imports Ray, and deploy/ sits above serving, imported only by the CLI (and
its settings by the configuration) (read statically from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "raymm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> every module it imports, anywhere in its body (function-level imports included)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
        graph[name] = found
    return graph


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_eval_never_imports_train_and_the_core_never_imports_ray() -> None:
    graph = _imports()
    offences = []
    for module, imported in graph.items():
        for target in imported:
            if _in(module, "raymm.eval") and _in(target, "raymm.training"):
                offences.append(f"{module} -> {target}")
            if _in(module, "raymm.serve") and any(_in(target, p) for p in ("raymm.training", "raymm.eval")):
                offences.append(f"{module} -> {target}")
            if _in(module, "raymm.stream") and (_in(target, "ray") or _in(target, "raymm.serve")):
                offences.append(f"{module} -> {target}")
            if any(_in(module, p) for p in ("raymm.models", "raymm.recommend")) and (
                _in(target, "ray")
                or any(_in(target, p) for p in ("raymm.training", "raymm.eval", "raymm.workflows"))
            ):
                offences.append(f"{module} -> {target}")
            # deploy/ renders from serving and the config; only the door opens it, and the config
            # holds its section (a plain pydantic module that imports nothing of raymm or Ray).
            if _in(target, "raymm.deploy") and not (
                _in(module, "raymm.deploy")
                or module == "raymm.cli"
                or (module == "raymm.config" and target == "raymm.deploy.settings")
            ):
                offences.append(f"{module} -> {target}")
            if module == "raymm.deploy.settings" and (_in(target, "raymm") or _in(target, "ray")):
                offences.append(f"{module} -> {target}")
    assert not offences, offences


def test_the_stage_packages_import_each_other_without_a_cycle() -> None:
    """Packages (raymm.<stage>) form a DAG: data <- features <- models <- recommend <- train/eval <- workflows
    <- cli, and stream <- serve <- deploy <- cli."""
    graph = _imports()

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for module, imported in graph.items():
        for target in imported:
            if (
                _in(target, "raymm")
                and package(target) != package(module)
                and package(target) != "raymm.__init__"
            ):
                if package(target) in (
                    "raymm",
                    "raymm.errors",
                    "raymm.config",
                    "raymm.runtime",
                    "raymm.console",
                ):
                    continue  # the ground floor every stage may use
                edges.setdefault(package(module), set()).add(package(target))
    visiting, done, cycles = set(), set(), []

    def visit(node: str, path: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append([*path, node])
            return
        visiting.add(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, [*path, node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(edges):
        visit(node, [])
    assert not cycles, cycles
    assert "raymm.training" not in edges.get("raymm.eval", set())
