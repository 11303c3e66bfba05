"""Shared helpers for importer tests: write tiny source files, run an import, read it back."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raymm.config import ImportConfig
from raymm.data.dataset import Dataset, load_dataset
from raymm.data.importers import import_dataset


@pytest.fixture
def write_source(tmp_path: Path) -> Callable[..., Path]:
    """Write files (name -> text or bytes; ``.gz`` names compressed) into tmp_path/src; returns the dir."""

    def write(files: dict[str, str | bytes], subdir: str = "src") -> Path:
        directory = tmp_path / subdir
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            if name.endswith(".gz"):
                data = gzip.compress(data)
            (directory / name).write_bytes(data)
        return directory

    return write


@pytest.fixture
def run_import(tmp_path: Path) -> Callable[..., tuple[dict[str, Any], Dataset]]:
    """Import ``source`` with the given config fields (and counting ``events``) into tmp_path/out;
    returns (manifest, dataset)."""

    def run(source: Path, events: list[str] | None = None, **fields: Any) -> tuple[dict[str, Any], Dataset]:
        out = tmp_path / "out"
        counting = {} if events is None else {"events": events}
        manifest = import_dataset(
            ImportConfig(source=str(source), **fields), str(out), progress=False, **counting
        )
        return manifest, load_dataset(str(out))

    return run
