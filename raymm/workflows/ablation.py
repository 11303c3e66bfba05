"""The ablation experiment: train each variant with Ray Train, evaluate all on one split, report.

Variants (``ablation.variants`` names them) come from the registries, not from a parsed string:
each modality alone (:data:`~raymm.data.schema.MODALITIES`), ``concat`` (no alignment,
concatenation: ``none+concat`` under the name design.md uses), every ``<aligner>+<fusion>`` pair
of :data:`~raymm.models.align.ALIGNERS` and :data:`~raymm.models.fusion.FUSIONS`, and the
training-free baselines (``popularity``, ``content``). Trained variants are config overrides of
one base config, so ``none+<fusion>`` and ``<aligner>+<fusion>`` share heads, widths and fusion
and differ only in the alignment loss; ``none+gated`` and ``contrastive+concat`` measure fusion
and alignment apart. The evaluator (:mod:`raymm.eval.evaluate`) ranks every variant, trained or
not, through the same scorer interface.

With ``ablation.missing_modality`` set, a copy of the features with ``missing_rate`` of that
modality's present rows hidden (a seeded subset of items) is written under ``out_dir``; every
trained variant is re-evaluated on it, and those in ``ablation.missing_retrain`` are also
re-trained on it. The input features are never modified.

``out_dir`` receives ``models/<variant>`` (artifacts; each run's Ray Train checkpoints under
``train/`` are removed once its artifact is written), ``report.md``, ``report.json`` (every
number) and PNG plots (:mod:`raymm.eval.report`).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymm.config import RaymmConfig, apply_overrides, config_from_dict
from raymm.data import io
from raymm.data.schema import MODALITIES
from raymm.errors import ConfigError, DataError
from raymm.eval.evaluate import EvalSetup, describe, eval_setup, evaluate_model, protocol_metrics
from raymm.eval.report import FULL, quality_orderings, render_markdown, write_plots
from raymm.features.store import FEATURES_MANIFEST, load_features
from raymm.models.align import ALIGNERS
from raymm.models.fusion import FUSIONS
from raymm.recommend.scorers import ContentScorer, PopularityScorer, Scorer


@dataclass(frozen=True)
class Variant:
    """One line of the ablation: a trained model (``overrides`` of the base config) or a
    training-free baseline (``baseline`` builds its scorer)."""

    name: str
    overrides: tuple[str, ...] = ()
    baseline: Callable[[], Scorer] | None = None

    @property
    def trained(self) -> bool:
        return self.baseline is None


def variants() -> dict[str, Variant]:
    """Every variant by name, generated from the modality, aligner and fusion registries."""
    found: dict[str, Variant] = {m: Variant(m, (f"model.modalities=[{m}]",)) for m in MODALITIES}
    found["concat"] = Variant("concat", ("model.align.method=none", "model.fusion.method=concat"))
    for aligner in ALIGNERS:
        for fusion in FUSIONS:
            name = f"{aligner}+{fusion}"
            found[name] = Variant(name, (f"model.align.method={aligner}", f"model.fusion.method={fusion}"))
    found["popularity"] = Variant("popularity", baseline=PopularityScorer)
    found["content"] = Variant("content", baseline=ContentScorer)
    return found


def variant(name: str) -> Variant:
    """The variant called ``name``; :class:`ConfigError` listing the known names otherwise."""
    known = variants()
    if name not in known:
        raise ConfigError(f"unknown ablation variant {name!r}; known variants: {', '.join(known)}")
    return known[name]


def variant_config(config: RaymmConfig, name: str, storage: str) -> RaymmConfig:
    """``config`` turned into the trained variant ``name``, checkpointing under ``storage``; validated."""
    document = config.model_dump(mode="json", by_alias=True)
    overrides = [*variant(name).overrides, f"train.run.storage_path={storage}"]
    return config_from_dict(apply_overrides(document, overrides), f"ablation variant {name!r}")


def headline_variant(config: RaymmConfig, names: list[str]) -> str | None:
    """The aligned+fused variant the quality orderings judge: the configured model if it is one.

    Otherwise the first aligned variant whose fusion is not plain concatenation (else the first
    aligned one): ``none+<fusion>`` aligns nothing, and ``<aligner>+concat`` is listed to measure
    alignment without the fused model's fusion, not as that model.
    """
    configured = f"{config.model.align.method}+{config.model.fusion.method}"
    aligned = [v for v in names if "+" in v and not v.startswith("none+")]
    if configured in aligned:
        return configured
    fused = [v for v in aligned if not v.endswith("+concat")]
    preferred = fused or aligned
    return preferred[0] if preferred else None


def _run_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label)


# --- the missing-modality copy --------------------------------------------------------------


def drop_modality(features_dir: str, out: str, modality: str, rate: float, seed: int) -> dict[str, Any]:
    """Write a copy of the features to ``out`` with ``rate`` of ``modality``'s present rows nulled.

    The hidden rows are a seeded random subset (``seed``) of the items that have the modality;
    their vectors become null (the features contract's "missing"), their error stays null. The
    input is only read. Returns ``{"features_dir", "modality", "rate", "present", "hidden"}``.
    Raises :class:`~raymm.errors.DataError` if the features lack ``modality``.
    """
    table = load_features(features_dir)
    if modality not in table.column_names:
        raise DataError(f"features at {features_dir} have no {modality!r} column to hide rows of")
    column = table.column(modality).combine_chunks()
    present = np.flatnonzero(np.asarray(column.is_valid()))
    n_hidden = round(rate * present.size)
    hidden = np.random.default_rng(seed).choice(present, size=n_hidden, replace=False)
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[hidden] = True
    nulls = pa.nulls(table.num_rows, column.type)
    degraded = pc.if_else(pa.array(mask), nulls, column)
    table = table.set_column(table.schema.get_field_index(modality), table.schema.field(modality), degraded)
    io.makedirs(out)
    io.write_table(table, io.join(out, "part-00000.parquet"))
    summary = {
        "features_dir": out,
        "modality": modality,
        "rate": rate,
        "present": int(present.size),
        "hidden": int(n_hidden),
    }
    source_manifest = io.join(features_dir, FEATURES_MANIFEST)
    if io.exists(source_manifest):
        manifest = io.read_json(source_manifest, "features manifest")
        manifest["derived"] = {"from": features_dir, "hidden_rows": summary}
        io.write_json(manifest, io.join(out, FEATURES_MANIFEST))
    return summary


# --- running the ablation ---------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report: a variant under one setting and its numbers.

    Trained variants also carry ``validation_ndcg`` (the served recommender's NDCG at the
    report's K on the validation users: what the best single modality is chosen by; in the
    document ``validation_ndcg@<K>``), the ``history`` of their run, its ``best_epoch``,
    ``validation_curve`` (the per-epoch validation ``val_metric``, the one that chose the best
    epoch; the two-tower alone, no fallback) and the manifest's ``notes``. Baselines leave them
    empty.
    """

    variant: str
    setting: str
    metrics: dict[str, dict[str, float]]
    model_dir: str | None = None
    fusion_weights: dict[str, float] | None = None
    history: list[dict[str, Any]] | None = None
    train_s: float | None = None
    validation_ndcg: float | None = None
    best_epoch: int | None = None
    val_metric: str | None = None
    validation_curve: list[float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.variant if self.setting == FULL else f"{self.variant} [{self.setting}]"


def _train_variant(
    config: RaymmConfig, name: str, data_dir: str, features_dir: str, out_dir: str, label: str
) -> tuple[str, float]:
    """One Ray Train run of the variant ``name``; returns (artifact directory, seconds)."""
    from raymm.training.trainer import train

    storage = io.join(out_dir, "train", _run_name(label))
    _remove_tree(storage)  # a re-run of the report trains afresh, never resumes
    model_dir = io.join(out_dir, "models", label)
    result = train(variant_config(config, name, storage), data_dir, features_dir, model_dir)
    _remove_tree(storage)  # the artifact holds the best weights; checkpoints are ~30 MB each
    return model_dir, result.elapsed_s


def _remove_tree(uri: str) -> None:
    if io.exists(uri):
        filesystem, path = io.resolve(uri)
        filesystem.delete_dir(path)


def _model_row(
    variant: str,
    setting: str,
    model_dir: str,
    setup: EvalSetup,
    config: RaymmConfig,
    train_s: float | None,
) -> Row:
    evaluated = evaluate_model(model_dir, setup, config.evaluate.ks)
    history = evaluated["history"]
    metric = config.train.val_metric
    best_epoch = evaluated["best_epoch"]
    return Row(
        variant,
        setting,
        evaluated["metrics"],
        model_dir,
        evaluated["fusion_weights"],
        history,
        train_s,
        validation_ndcg=evaluated["validation_ndcg"],
        best_epoch=None if best_epoch is None else int(best_epoch),
        val_metric=metric,
        validation_curve=[float(h.get(f"val_{metric}", float("nan"))) for h in history],
        notes=evaluated["notes"],
    )


def ablation(
    config: RaymmConfig,
    data_dir: str,
    features_dir: str,
    out_dir: str,
    progress: Callable[[str], None] | None = None,
    trained_models: Mapping[str, str] | None = None,
    ranked_model: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate every variant of ``config.ablation.variants`` on one split; write the report.

    One Ray Train run per trained variant (and per re-trained missing-modality variant), except
    the variants ``trained_models`` maps to an artifact already trained with exactly that
    variant's config (the quickstart passes the model ``raymm train`` just wrote): those are
    evaluated as they are. ``ranked_model``, an artifact with a ranking stage, adds the ranker's
    pointwise and retrieve-then-rank section (:mod:`raymm.eval.rank`) and its calibration plot. Writes
    ``out_dir/report.md``, ``out_dir/report.json`` and the PNG plots; returns the JSON document:
    ``{"created_at", "config", "ks", "k", "headline", "protocols", "skipped", "missing",
    "rows": [{"variant", "setting", "label", "metrics": {protocol: {...}}, "validation_ndcg@<k>",
    "best_epoch", "val_metric", "validation_curve", "notes", ...}] (see :class:`Row`), "orderings",
    "plots", "report"}``. Raises :class:`ConfigError` for an unknown variant before training
    anything, and what :func:`~raymm.training.trainer.train` raises.
    """
    say = progress or (lambda _message: None)
    cfg = config.ablation
    ks = config.evaluate.ks
    chosen = [variant(name) for name in cfg.variants]  # fail on a bad name before any training
    data_dir, features_dir, out_dir = io.absolute(data_dir), io.absolute(features_dir), io.absolute(out_dir)
    io.makedirs(out_dir)
    started = time.perf_counter()
    setup = eval_setup(config, data_dir, features_dir)
    trained = [v.name for v in chosen if v.trained]
    rows: list[Row] = []
    for entry in chosen:
        if entry.baseline is not None:
            say(f"evaluating the {entry.name} baseline")
            rows.append(
                Row(entry.name, FULL, protocol_metrics(entry.baseline().fit(setup.context), setup, ks))
            )
            continue
        reused = (trained_models or {}).get(entry.name)
        if reused is not None:
            say(f"evaluating {entry.name} as trained in {reused}")
            rows.append(_model_row(entry.name, FULL, io.absolute(reused), setup, config, None))
            continue
        say(f"training {entry.name}")
        model_dir, seconds = _train_variant(config, entry.name, data_dir, features_dir, out_dir, entry.name)
        rows.append(_model_row(entry.name, FULL, model_dir, setup, config, seconds))

    missing: dict[str, Any] | None = None
    if cfg.missing_modality is not None and trained:
        missing, missing_rows = _missing_modality_rows(config, data_dir, features_dir, out_dir, trained, rows)
        rows += missing_rows
        say(f"missing {cfg.missing_modality}: {len(missing_rows)} rows")

    k = 20 if 20 in ks else max(ks)
    headline = headline_variant(config, cfg.variants)
    document: dict[str, Any] = {
        "created_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "data_dir": data_dir,
        "features_dir": features_dir,
        "config": config_summary(config),
        "ks": list(ks),
        "k": k,
        "headline": headline,
        **describe(setup),
        "missing": missing,
        "rows": [_row_document(row, k) for row in rows],
        "elapsed_s": time.perf_counter() - started,
    }
    document["orderings"] = quality_orderings(document)
    document["plots"] = write_plots(document, out_dir)
    markdown = render_markdown(document)
    if ranked_model is not None:
        from raymm.eval.rank import evaluate_rank, rank_markdown

        say(f"evaluating the ranking stage of {ranked_model}")
        document["rank"] = evaluate_rank(
            config, data_dir, features_dir, io.absolute(ranked_model), out_dir, protocols=setup
        )
        document["plots"].update(document["rank"]["plots"])
        markdown = markdown.rstrip("\n") + "\n\n" + rank_markdown(document["rank"]).rstrip("\n") + "\n"
    document["report"] = io.join(out_dir, "report.md")
    io.write_bytes(markdown.encode(), document["report"])
    io.write_json(document, io.join(out_dir, "report.json"))
    return document


def _missing_modality_rows(
    config: RaymmConfig,
    data_dir: str,
    features_dir: str,
    out_dir: str,
    trained: list[str],
    rows: list[Row],
) -> tuple[dict[str, Any], list[Row]]:
    """Hide rows of one modality in a copy of the features; re-evaluate and re-train on it.

    Single-modality variants of another modality do not read the hidden one and are left out.
    """
    cfg = config.ablation
    assert cfg.missing_modality is not None
    tag = f"missing-{cfg.missing_modality}-{round(100 * cfg.missing_rate)}"
    summary = drop_modality(
        features_dir, io.join(out_dir, f"features-{tag}"), cfg.missing_modality, cfg.missing_rate, config.seed
    )
    degraded = eval_setup(config, data_dir, summary["features_dir"])
    setting = f"{cfg.missing_modality} {cfg.missing_rate:.0%} missing"
    result: list[Row] = []
    for row in rows:
        reads_it = row.variant not in MODALITIES or row.variant == cfg.missing_modality
        if row.model_dir is not None and row.variant in trained and reads_it:
            result.append(
                _model_row(row.variant, f"{setting}, same model", row.model_dir, degraded, config, None)
            )
    for variant in (v for v in cfg.missing_retrain if v in trained):
        label = f"{variant}@{tag}"
        model_dir, seconds = _train_variant(
            config, variant, data_dir, summary["features_dir"], out_dir, label
        )
        result.append(_model_row(variant, f"{setting}, re-trained", model_dir, degraded, config, seconds))
    return summary, result


def _row_document(row: Row, k: int) -> dict[str, Any]:
    document = {**asdict(row), "label": row.label}
    document[f"validation_ndcg@{k}"] = document.pop("validation_ndcg")
    return document


def config_summary(config: RaymmConfig) -> dict[str, Any]:
    """The settings a reader of the report needs to judge the numbers."""
    train, model = config.train, config.model
    return {
        "seed": config.seed,
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "lr": train.lr,
        "num_workers": train.run.num_workers,
        "item_id_embeddings": model.item_id_embeddings,
        "patience": train.patience,
        "model": f"{model.align.method} alignment + {model.fusion.method} fusion",
        "shared_dim": model.align.shared_dim,
        "embed_dim": model.towers.embed_dim,
        "user_pooling": model.user_state.pooling,
        "variants": list(config.ablation.variants),
        "missing_modality": config.ablation.missing_modality,
        "missing_rate": config.ablation.missing_rate,
        "missing_retrain": list(config.ablation.missing_retrain),
    }
