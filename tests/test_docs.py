"""The README is a front door and the generated docs are current.

docs/generate.py writes the configuration reference (from raymm/config.py's types), the results
pages (from bench/results/*.json) and the results blocks in README.md and docs/*.md. These tests
regenerate every page into a temporary directory and fail, naming the page, when a committed one
differs; and they fail on a README past its length or a relative link to nothing.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
#: A markdown link or image: ``[text](target)``; the target up to the first space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    """docs/generate.py as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page`` (code blocks skipped)."""
    found, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else HEADING.match(line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(2).lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_generated_pages_are_current(generate: ModuleType, tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.md"))
    assert "docs/reference/configuration.md" in written
    assert "README.md" in written, "README.md lost its results block"
    assert len([p for p in written if p.startswith("docs/results/")]) >= 10
    stale = [
        path
        for path in written
        if not (ROOT / path).exists() or (ROOT / path).read_text() != (tmp_path / path).read_text()
    ]
    assert stale == [], (
        f"stale generated docs {stale}: run `make docs` (python docs/generate.py) and commit them"
    )


def test_configuration_reference_lists_every_key(generate: ModuleType) -> None:
    from pydantic import BaseModel

    from raymm.config import RaymmConfig

    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    listed = set(re.findall(r"^\| `([\w.]+)` \|", page, re.M))
    expected = set()
    for prefix, cls, value in generate.config_keys(RaymmConfig()):
        for name, field in cls.model_fields.items():
            if not isinstance(getattr(value, name), BaseModel):
                expected.add(f"{prefix}{field.alias or name}")
    assert {"seed", "import.split", "kafka.partitions", "deploy.prod.job_workers.max_replicas"} <= expected
    assert listed == expected


def test_every_configuration_key_has_a_meaning(generate: ModuleType) -> None:
    """A key added without a description, a ``#:`` comment or a docstring sentence naming it
    fails here, naming the key."""
    _, undocumented = generate.configuration_reference()
    assert undocumented == [], f"configuration keys without a one-line meaning in the code: {undocumented}"


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; the manual belongs in docs/"
    links = {target for line in lines for target in LINK.findall(line)}
    assert any(target.startswith("docs/") for target in links), "README.md links to nothing in docs/"
    assert "make quickstart" in "\n".join(lines) and "make test" in "\n".join(lines)


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(
                f"{target} (no {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved})"
            )
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.relative_to(ROOT)})")
    assert broken == [], f"{page.relative_to(ROOT)} links to nothing: {broken}"


def test_the_readme_python_example_calls_the_api_as_it_is() -> None:
    """Every ``raymm.<name>(...)`` call in README.md's Python block binds to the public function's
    signature (positional and keyword arguments alike), and the names are the public API."""
    import ast
    import inspect

    import raymm

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no Python example"
    calls = [
        node
        for node in ast.walk(ast.parse(blocks[0]))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "raymm"
    ]
    assert {call.func.attr for call in calls} >= {"load_config", "extract", "train", "evaluate", "load_model"}
    for call in calls:
        name = call.func.attr
        assert name in raymm.__all__, f"README calls raymm.{name}, which is not public API"
        function = getattr(raymm, name)
        assert callable(function), f"raymm.{name} is {function!r}, not the function"
        positional = [object()] * len(call.args)
        keywords = {keyword.arg: object() for keyword in call.keywords if keyword.arg is not None}
        try:
            inspect.signature(function).bind(*positional, **keywords)
        except TypeError as exc:
            pytest.fail(f"README's raymm.{name}(...) does not match its signature: {exc}")
