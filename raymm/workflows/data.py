"""The data stage as ``raymm data`` runs it: synthesize, validate, import and export a dataset.

Each function takes the configuration and paths by keyword (``None``: the configuration's default,
``<out>/data`` and the like), and returns a typed result that prints its own summary
(:func:`raymm.console.print_result`); ``plan_*`` say what the stage would do (``--dry-run``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raymm.config import RaymmConfig
from raymm.console import Plan, StageResult
from raymm.errors import RaymmError

if TYPE_CHECKING:
    from raymm.data.validate import ValidationReport


def counts_rows(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """``<table> rows`` summary rows from a dataset manifest's counts."""
    counts = manifest.get("counts", {})
    return [(f"{name} rows", f"{count:,}") for name, count in counts.items()]


def _synth_seed(config: RaymmConfig) -> int:
    return config.synth.seed if config.synth.seed is not None else config.seed


@dataclass
class SynthResult(StageResult):
    """A synthesized dataset: where it went, its preset and seed, and its manifest."""

    dataset: str
    size: str
    seed: int
    manifest: dict[str, Any]
    elapsed_s: float | None = None
    title = "data synth"

    def summary_rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [("dataset", self.dataset), ("size", self.size), ("seed", self.seed)]
        return rows + counts_rows(self.manifest)


def plan_synth(config: RaymmConfig, *, out: str | None = None) -> Plan:
    plan = Plan("data synth")
    plan.add(
        f"synthesize '{config.synth.size}' benchmark (seed {_synth_seed(config)})",
        out or config.stage_dir("data"),
    )
    return plan


def synth(config: RaymmConfig, *, out: str | None = None, progress: bool = True) -> SynthResult:
    """Generate the synthetic benchmark (``config.synth``) into ``out`` (default ``<out>/data``)."""
    from raymm.data.synth import synthesize

    out = out or config.stage_dir("data")
    start = time.perf_counter()
    manifest = synthesize(config.synth, out, seed=config.seed, progress=progress)
    return SynthResult(out, config.synth.size, _synth_seed(config), manifest, time.perf_counter() - start)


@dataclass
class ValidateResult(StageResult):
    """A dataset's validation report, and where its JSON went (``report_path``, or None)."""

    dataset: str
    report: ValidationReport
    report_path: str | None = None
    elapsed_s: float | None = None
    title = "data validate"

    def summary_rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [("dataset", self.dataset)]
        rows += [(name, f"{count:,}") for name, count in self.report.counts.items()]
        rows.append(("problems", len(self.report.problems)))
        if self.report_path is not None:
            rows.append(("report", self.report_path))
        return rows

    def details(self) -> list[str]:
        return [f"  problem: {problem}" for problem in self.report.problems]

    @property
    def ok(self) -> bool:
        return self.report.ok


def plan_validate(config: RaymmConfig, *, path: str | None = None) -> Plan:
    plan = Plan("data validate")
    plan.add("validate dataset (schemas, ids, timestamps, media)", path or config.stage_dir("data"))
    return plan


def validate(
    config: RaymmConfig, *, path: str | None = None, report_dir: str | None = None, progress: bool = True
) -> ValidateResult:
    """Validate the dataset at ``path`` (default ``<out>/data``); with ``report_dir``, write
    ``validation.json`` there. Raises :class:`~raymm.errors.DataError` when ``path`` does not exist."""
    from raymm.data import io
    from raymm.data.validate import validate_dataset

    path = path or config.stage_dir("data")
    start = time.perf_counter()
    report = validate_dataset(path, config.validate_, progress=progress)
    report_path = None
    if report_dir:
        document = {"path": report.path, "ok": report.ok, "counts": report.counts}
        document["problems"] = [dataclasses.asdict(problem) for problem in report.problems]
        io.write_json(document, io.join(report_dir, "validation.json"))
        report_path = f"{report_dir}/validation.json"
    return ValidateResult(path, report, report_path, time.perf_counter() - start)


@dataclass
class ImportResult(StageResult):
    """An imported dataset: where it went, from what, and its manifest (counts, split users, warnings)."""

    dataset: str
    format: str
    source: str
    manifest: dict[str, Any]
    elapsed_s: float | None = None
    title = "data import"

    def summary_rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("dataset", self.dataset),
            ("format", self.format),
            ("source", self.source),
        ]
        rows += counts_rows(self.manifest)
        rows += [
            (
                f"{split} users",
                f"{users['users']:,} ({users['without_history']:,} with an empty history, "
                f"{users['without_train']:,} without train events)",
            )
            for split, users in self.manifest.get("split_users", {}).items()
        ]
        warnings = self.warnings()
        shown = f"{len(warnings)} (below, and in {self.dataset}/dataset.json)" if warnings else "none"
        rows.append(("warnings", shown))
        return rows

    def warnings(self) -> list[str]:
        return list(self.manifest.get("warnings", []))


def _import_settings(config: RaymmConfig) -> tuple[str, str]:
    cfg = config.import_
    if cfg.format is None or cfg.source is None:
        raise RaymmError("data import needs --format and --source (or import.format / import.source)")
    return cfg.format, cfg.source


def plan_import(config: RaymmConfig, *, out: str | None = None) -> Plan:
    """Raises :class:`~raymm.errors.RaymmError` when ``import.format`` or ``import.source`` is unset."""
    form, source = _import_settings(config)
    plan = Plan("data import")
    plan.add(f"import {form} from {source}", out or config.stage_dir("data"))
    return plan


def import_data(config: RaymmConfig, *, out: str | None = None, progress: bool = True) -> ImportResult:
    """Import ``import.source`` in ``import.format`` into ``out`` (default ``<out>/data``).

    Raises :class:`~raymm.errors.RaymmError` when either setting is unset or the source is bad.
    """
    from raymm.data.importers import import_dataset

    form, source = _import_settings(config)
    out = out or config.stage_dir("data")
    start = time.perf_counter()
    manifest = import_dataset(config.import_, out, progress=progress, events=config.model.user_state.events)
    return ImportResult(out, form, source, manifest, time.perf_counter() - start)


@dataclass
class ExportResult(StageResult):
    """An exported dataset: from where, in what format, to where, and the exporter's summary."""

    dataset: str
    format: str
    out: str
    exported: dict[str, Any]
    elapsed_s: float | None = None
    title = "data export"

    def summary_rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("dataset", self.dataset),
            ("format", self.format),
            ("written to", self.out),
        ]
        return rows + [(str(k), v) for k, v in self.exported.items() if k != "out"]


def plan_export(
    config: RaymmConfig, *, data: str | None = None, out: str | None = None, name: str = "raymm"
) -> Plan:
    plan = Plan("data export")
    data, out = data or config.stage_dir("data"), out or config.stage_dir("export")
    plan.add(f"export {data} as mmrec ({name})", out)
    return plan


def export_data(
    config: RaymmConfig, *, data: str | None = None, out: str | None = None, name: str = "raymm"
) -> ExportResult:
    """Export the dataset at ``data`` (default ``<out>/data``) in MMRec's layout into ``out``
    (default ``<out>/export``), named ``name``."""
    from raymm.data.export import export_mmrec

    data, out = data or config.stage_dir("data"), out or config.stage_dir("export")
    start = time.perf_counter()
    exported = export_mmrec(data, out, name=name)
    return ExportResult(data, "mmrec", out, exported, time.perf_counter() - start)
