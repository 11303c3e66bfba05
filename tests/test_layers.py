"""The package's import graph follows the flow: no cycle, eval never imports train, serve never
imports train or eval, the stream layer never imports Ray or serving, nothing under models/ or
the recommendation core imports Ray, deploy/ sits above serving, imported only by the CLI, and the
configuration hub (raymm.config) sits above the stages' own sections: it assembles each stage's
settings module, and neither those modules nor data/ and features/ import it (read statically
from the source)."""

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
                # ``from raymm import console`` imports the submodule raymm.console
                found.update(_submodule(node.module, alias.name) for alias in node.names)
        graph[name] = found
    return graph


def _submodule(package: str, name: str) -> str:
    """``package.name`` when that is a module of raymm, else ``package`` (a name defined in it)."""
    path = ROOT.parent.joinpath(*package.split("."), name)
    return f"{package}.{name}" if path.with_suffix(".py").is_file() or path.is_dir() else package


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


#: The configuration hub: it assembles the stages' sections into RaymmConfig.
HUB = "raymm.config"
#: Modules every stage may import: they import nothing of raymm but each other.
GROUND_FLOOR = ("raymm.errors", "raymm.console", "raymm.runtime", "raymm.settings_base")


def _is_settings(module: str) -> bool:
    """A stage's configuration sections (``raymm.<stage>.settings``, and the models stage's
    ``raymm.models.config``), which the hub assembles."""
    return module.endswith(".settings") or module == "raymm.models.config"


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
            # deploy/ renders from serving and the config; only the door opens it, and only the hub
            # reads its section (a plain pydantic module that imports nothing of raymm or Ray).
            if (
                _in(target, "raymm.deploy")
                and not _in(module, "raymm.deploy")
                and module != (HUB if _is_settings(target) else "raymm.cli")
            ):
                offences.append(f"{module} -> {target}")
            if module == "raymm.deploy.settings" and (_in(target, "raymm") or _in(target, "ray")):
                offences.append(f"{module} -> {target}")
    assert not offences, offences


def test_the_config_hub_assembles_the_stages_sections_and_the_ground_floor_never_imports_it() -> None:
    """data/ and features/ read their own sections (raymm.data.settings, raymm.features.settings),
    never the hub; a settings module never imports the hub that assembles it; the ground floor
    imports nothing of raymm above it."""
    graph = _imports()
    assert HUB in graph and any(_is_settings(target) for target in graph[HUB])
    offences = []
    for module, imported in graph.items():
        for target in imported:
            if target == HUB and (
                any(_in(module, p) for p in ("raymm.data", "raymm.features")) or _is_settings(module)
            ):
                offences.append(f"{module} -> {target}")
            if module in GROUND_FLOOR and _in(target, "raymm") and target not in GROUND_FLOOR:
                offences.append(f"{module} -> {target} (ground floor)")
    assert not offences, offences


def test_the_stage_packages_import_each_other_without_a_cycle() -> None:
    """Packages (raymm.<stage>) form a DAG: data <- features <- models <- recommend <- train/eval <- workflows
    <- cli, and stream <- serve <- deploy <- cli. The hub is a node of its own, above the stages'
    settings modules (each also a node of its own, below the hub) and below the stages that take
    the whole configuration."""
    graph = _imports()

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    def node(module: str) -> str:
        return module if _is_settings(module) else package(module)

    edges: dict[str, set[str]] = {}
    for module, imported in graph.items():
        for target in imported:
            if not _in(target, "raymm") or package(target) == "raymm" or package(target) in GROUND_FLOOR:
                continue  # outside raymm, the package root, and the ground floor every stage may use
            if package(target) == package(module) and not _is_settings(module):
                continue  # a stage's code reading its own modules, its settings included
            if node(target) != node(module):
                edges.setdefault(node(module), set()).add(node(target))
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
