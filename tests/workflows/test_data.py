"""The data stage's workflows (:mod:`raymm.workflows.data`): paths default to the config's, and each
result's summary says what was written, what was found and whether the CLI exits 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raymm.config import load_config
from raymm.data import io
from raymm.errors import RaymmError
from raymm.workflows import data


def test_synth_validate_and_export_default_to_the_output_root(tmp_path: Path) -> None:
    config = load_config(None, [f"out={tmp_path}", "synth.size=tiny", "seed=3"])
    synth = data.synth(config, progress=False)
    assert synth.dataset == str(tmp_path / "data") and (tmp_path / "data" / "items.parquet").is_file()
    rows = dict(synth.summary_rows())
    assert rows["seed"] == 3 and rows["size"] == "tiny"
    assert rows["items rows"] == f"{synth.manifest['counts']['items']:,}"

    checked = data.validate(config, progress=False)
    assert checked.ok and checked.details() == [] and checked.report_path is None
    assert dict(checked.summary_rows())["problems"] == 0

    exported = data.export_data(config, name="toy")
    assert exported.out == str(tmp_path / "export") and (tmp_path / "export" / "toy.inter").is_file()
    assert dict(exported.summary_rows())["written to"] == str(tmp_path / "export")


def test_validate_reports_problems_and_writes_the_report(tmp_path: Path) -> None:
    config = load_config(None, [f"out={tmp_path}", "synth.size=tiny"])
    dataset = data.synth(config, progress=False).dataset
    interactions = io.read_table(f"{dataset}/test.parquet").to_pydict()
    interactions["item_id"][5] = "ghost"
    io.write_table(pa.table(interactions), f"{dataset}/test.parquet")
    checked = data.validate(config, path=dataset, report_dir=str(tmp_path / "report"), progress=False)
    assert not checked.ok
    assert checked.details() == [f"  problem: {problem}" for problem in checked.report.problems]
    assert any("item_id not in items.parquet (e.g. ['ghost']) at row 5" in line for line in checked.details())
    assert dict(checked.summary_rows())["report"] == f"{tmp_path / 'report'}/validation.json"
    assert io.read_json(str(tmp_path / "report" / "validation.json"))["ok"] is False


def test_import_needs_a_format_and_a_source_and_passes_the_warnings_on(tmp_path: Path) -> None:
    with pytest.raises(RaymmError, match="needs --format and --source"):
        data.plan_import(load_config(None, ["import.format=mmrec"]))
    source = tmp_path / "mm"
    source.mkdir()
    (source / "toy.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n1\t1\t0\n0\t1\t2\n2\t0\t2\n")
    np.save(source / "text_feat.npy", np.ones((3, 3), np.float32))
    config = load_config(None, [f"out={tmp_path}", "import.format=mmrec", f"import.source={source}"])
    imported = data.import_data(config, progress=False)
    assert imported.dataset == str(tmp_path / "data")
    warnings = imported.warnings()
    assert len(warnings) == 2 and "no timestamp column in" in warnings[0]
    assert dict(imported.summary_rows())["warnings"] == f"2 (below, and in {tmp_path / 'data'}/dataset.json)"
