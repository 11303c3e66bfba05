"""The ablation report: train each variant with Ray Train, evaluate all on one split, write it up.

Variants by name (``evaluate.ablation``):

* ``text``, ``image``, ``audio``: the configured model on that one modality (``train.modalities``);
* ``concat``: no alignment, concatenation fusion (``align.method=none``, ``fusion.method=concat``);
* ``<align>+<fusion>``: align in contrastive|cca|linear|kg|none, fusion in concat|attention|gated;
* ``popularity``: the most-popular baseline (nothing is trained).

With ``evaluate.missing_modality`` set, a copy of the features with ``missing_rate`` of that
modality's present rows hidden (a seeded subset of items) is written under ``out_dir``; every
trained variant is re-evaluated on it, and those in ``evaluate.missing_retrain`` are also
re-trained on it. The input features are never modified.

``out_dir`` receives ``models/<variant>`` (artifacts; each run's Ray Train checkpoints under
``train/`` are removed once its artifact is written),
``report.md``, ``report.json`` (every number) and PNG plots: Recall@K per variant, mean fusion
weights per modality (variants whose fusion weighs modalities), training curves.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from io import BytesIO
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymm.config import RaymmConfig, apply_overrides, config_from_dict
from raymm.data import io
from raymm.errors import ConfigError, DataError
from raymm.eval.evaluate import EvalSetup, describe, eval_setup, evaluate_model, popularity_metrics
from raymm.features.pipeline import FEATURES_MANIFEST, load_features

SINGLE_MODALITIES: tuple[str, ...] = ("text", "image", "audio")
ALIGN_METHODS: tuple[str, ...] = ("contrastive", "cca", "linear", "kg", "none")
FUSION_METHODS: tuple[str, ...] = ("concat", "attention", "gated")
POPULARITY = "popularity"
METRICS: tuple[tuple[str, str], ...] = (
    ("recall", "Recall"),
    ("ndcg", "NDCG"),
    ("hit_rate", "HitRate"),
    ("mrr", "MRR"),
    ("precision", "Precision"),
    ("f1", "F1"),
    ("coverage", "Coverage"),
)
#: "beats popularity by a wide margin" on cold-start items: at least this many times its value.
WIDE_MARGIN = 2.0
FULL = "all features"


# --- variants -------------------------------------------------------------------------------


def variant_overrides(variant: str) -> list[str]:
    """The ``--set`` overrides that turn the base config into ``variant``; [] for popularity.

    Raises :class:`ConfigError` for a name that is none of the forms in the module docstring.
    """
    if variant == POPULARITY:
        return []
    if variant in SINGLE_MODALITIES:
        return [f"train.modalities=[{variant}]"]
    if variant == "concat":
        return ["model.align.method=none", "model.fusion.method=concat"]
    align, plus, fusion = variant.partition("+")
    if plus and align in ALIGN_METHODS and fusion in FUSION_METHODS:
        return [f"model.align.method={align}", f"model.fusion.method={fusion}"]
    raise ConfigError(
        f"unknown ablation variant {variant!r}; expected one of {', '.join(SINGLE_MODALITIES)}, concat, "
        f"{POPULARITY} or <align>+<fusion> with align in {'|'.join(ALIGN_METHODS)} and fusion in "
        f"{'|'.join(FUSION_METHODS)}"
    )


def variant_config(config: RaymmConfig, variant: str, storage: str) -> RaymmConfig:
    """``config`` turned into ``variant``, checkpointing under ``storage``; validated."""
    document = config.model_dump(mode="json", by_alias=True)
    overrides = [*variant_overrides(variant), f"train.storage_path={storage}"]
    return config_from_dict(apply_overrides(document, overrides), f"ablation variant {variant!r}")


def headline_variant(config: RaymmConfig, variants: Sequence[str]) -> str | None:
    """The aligned+fused variant the quality orderings judge: the configured model if it is one."""
    configured = f"{config.model.align.method}+{config.model.fusion.method}"
    aligned = [v for v in variants if "+" in v and not v.startswith("none+")]
    if configured in aligned:
        return configured
    return aligned[0] if aligned else None


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
    """One line of the report: a variant under one setting and its numbers."""

    variant: str
    setting: str
    metrics: dict[str, dict[str, float]]
    model_dir: str | None = None
    fusion_weights: dict[str, float] | None = None
    history: list[dict[str, Any]] | None = None
    train_s: float | None = None

    @property
    def label(self) -> str:
        return self.variant if self.setting == FULL else f"{self.variant} [{self.setting}]"


def _train_variant(
    config: RaymmConfig, variant: str, data_dir: str, features_dir: str, out_dir: str, label: str
) -> tuple[str, float]:
    """One Ray Train run of ``variant``; returns (artifact directory, seconds)."""
    from raymm.train.trainer import train

    storage = io.join(out_dir, "train", _run_name(label))
    _remove_tree(storage)  # a re-run of the report trains afresh, never resumes
    model_dir = io.join(out_dir, "models", label)
    result = train(variant_config(config, variant, storage), data_dir, features_dir, model_dir)
    _remove_tree(storage)  # the artifact holds the best weights; checkpoints are ~30 MB each
    return model_dir, result.elapsed_s


def _remove_tree(uri: str) -> None:
    if io.exists(uri):
        filesystem, path = io.resolve(uri)
        filesystem.delete_dir(path)


def _model_row(
    variant: str, setting: str, model_dir: str, setup: EvalSetup, ks: Sequence[int], train_s: float | None
) -> Row:
    evaluated = evaluate_model(model_dir, setup, ks)
    return Row(
        variant,
        setting,
        evaluated["metrics"],
        model_dir,
        evaluated["fusion_weights"],
        evaluated["history"],
        train_s,
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
    """Train and evaluate every variant of ``config.evaluate.ablation`` on one split; write the report.

    One Ray Train run per trained variant (and per re-trained missing-modality variant), except
    the variants ``trained_models`` maps to an artifact already trained with exactly that
    variant's config (the quickstart passes the model ``raymm train`` just wrote): those are
    evaluated as they are. ``ranked_model``, an artifact with a ranking stage, adds the ranker's
    pointwise and retrieve-then-rank section (:mod:`raymm.eval.rank`) and its calibration plot. Writes
    ``out_dir/report.md``, ``out_dir/report.json`` and the PNG plots; returns the JSON document:
    ``{"created_at", "config", "ks", "k", "headline", "protocols", "skipped", "missing",
    "rows": [{"variant", "setting", "label", "metrics": {protocol: {...}}, ...}], "orderings",
    "plots", "report"}``. Raises :class:`ConfigError` for an unknown variant before training
    anything, and what :func:`~raymm.train.trainer.train` raises.
    """
    say = progress or (lambda _message: None)
    cfg = config.evaluate
    ks = cfg.ks
    for variant in cfg.ablation:
        variant_overrides(variant)  # fail on a bad name before any training
    data_dir, features_dir, out_dir = io.absolute(data_dir), io.absolute(features_dir), io.absolute(out_dir)
    io.makedirs(out_dir)
    started = time.perf_counter()
    setup = eval_setup(config, data_dir, features_dir)
    trained = [v for v in cfg.ablation if v != POPULARITY]
    rows: list[Row] = []
    for variant in cfg.ablation:
        if variant == POPULARITY:
            rows.append(Row(variant, FULL, popularity_metrics(setup, ks)))
            continue
        reused = (trained_models or {}).get(variant)
        if reused is not None:
            say(f"evaluating {variant} as trained in {reused}")
            rows.append(_model_row(variant, FULL, io.absolute(reused), setup, ks, None))
            continue
        say(f"training {variant}")
        model_dir, seconds = _train_variant(config, variant, data_dir, features_dir, out_dir, variant)
        rows.append(_model_row(variant, FULL, model_dir, setup, ks, seconds))

    missing: dict[str, Any] | None = None
    if cfg.missing_modality is not None and trained:
        missing, missing_rows = _missing_modality_rows(config, data_dir, features_dir, out_dir, trained, rows)
        rows += missing_rows
        say(f"missing {cfg.missing_modality}: {len(missing_rows)} rows")

    k = 20 if 20 in ks else max(ks)
    headline = headline_variant(config, cfg.ablation)
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
        "rows": [_row_document(row) for row in rows],
        "elapsed_s": time.perf_counter() - started,
    }
    document["orderings"] = quality_orderings(document)
    document["plots"] = write_plots(document, out_dir)
    markdown = render_markdown(document)
    if ranked_model is not None:
        from raymm.eval.rank import evaluate_rank, rank_markdown

        say(f"evaluating the ranking stage of {ranked_model}")
        document["rank"] = evaluate_rank(config, data_dir, features_dir, io.absolute(ranked_model), out_dir)
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
    cfg = config.evaluate
    assert cfg.missing_modality is not None
    tag = f"missing-{cfg.missing_modality}-{round(100 * cfg.missing_rate)}"
    summary = drop_modality(
        features_dir, io.join(out_dir, f"features-{tag}"), cfg.missing_modality, cfg.missing_rate, config.seed
    )
    degraded = eval_setup(config, data_dir, summary["features_dir"])
    setting = f"{cfg.missing_modality} {cfg.missing_rate:.0%} missing"
    result: list[Row] = []
    ks = cfg.ks
    for row in rows:
        reads_it = row.variant not in SINGLE_MODALITIES or row.variant == cfg.missing_modality
        if row.model_dir is not None and row.variant in trained and reads_it:
            result.append(
                _model_row(row.variant, f"{setting}, same model", row.model_dir, degraded, ks, None)
            )
    for variant in (v for v in cfg.missing_retrain if v in trained):
        label = f"{variant}@{tag}"
        model_dir, seconds = _train_variant(
            config, variant, data_dir, summary["features_dir"], out_dir, label
        )
        result.append(_model_row(variant, f"{setting}, re-trained", model_dir, degraded, ks, seconds))
    return summary, result


def _row_document(row: Row) -> dict[str, Any]:
    return {**asdict(row), "label": row.label}


def config_summary(config: RaymmConfig) -> dict[str, Any]:
    """The settings a reader of the report needs to judge the numbers."""
    train, model = config.train, config.model
    return {
        "seed": config.seed,
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "lr": train.lr,
        "num_workers": train.num_workers,
        "item_id_embeddings": train.item_id_embeddings,
        "patience": train.patience,
        "model": f"{model.align.method} alignment + {model.fusion.method} fusion",
        "shared_dim": model.align.shared_dim,
        "embed_dim": model.towers.embed_dim,
        "user_pooling": model.towers.user_pooling,
        "variants": list(config.evaluate.ablation),
        "missing_modality": config.evaluate.missing_modality,
        "missing_rate": config.evaluate.missing_rate,
        "missing_retrain": list(config.evaluate.missing_retrain),
    }


# --- the quality orderings of design.md -------------------------------------------------------


def _find(document: dict[str, Any], variant: str | None, setting_part: str) -> dict[str, Any] | None:
    for row in document["rows"]:
        if row["variant"] == variant and setting_part in row["setting"]:
            return row
    return None


def _values(row: dict[str, Any] | None, protocol: str, k: int) -> tuple[float, float] | None:
    if row is None or protocol not in row["metrics"]:
        return None
    metrics = row["metrics"][protocol]
    return metrics[f"recall@{k}"], metrics[f"ndcg@{k}"]


def _check(
    name: str,
    left: tuple[str, tuple[float, float] | None],
    right: tuple[str, tuple[float, float] | None],
    holds: Callable[[float, float], bool],
    k: int,
) -> dict[str, Any]:
    """One ordering on Recall@k and NDCG@k; ``holds`` is None when a side was not run."""
    (left_name, left_values), (right_name, right_values) = left, right
    result: dict[str, Any] = {"name": name, "left": left_name, "right": right_name, "k": k}
    if left_values is None or right_values is None:
        result.update(holds=None, why="not run (a variant or protocol is missing)")
        return result
    result.update(
        left_values={f"recall@{k}": left_values[0], f"ndcg@{k}": left_values[1]},
        right_values={f"recall@{k}": right_values[0], f"ndcg@{k}": right_values[1]},
        holds=all(holds(a, b) for a, b in zip(left_values, right_values, strict=True)),
    )
    return result


def _missing_pair(
    document: dict[str, Any], headline: str | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The headline and concat rows with a modality missing, both re-trained if possible, else both not."""
    for setting in ("re-trained", "same model"):
        pair = _find(document, headline, setting), _find(document, "concat", setting)
        if pair[0] is not None and pair[1] is not None:
            return pair
    return None, None


def quality_orderings(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The quality targets of design.md section 4 as checks on the report's rows, at K = ``document["k"]``.

    Each ``{"name", "left", "right", "holds": bool | None, ...}``; None when not run.
    design.md's "matches concat" is read as the issue's "at least as good as" (no tolerance below
    it); "wide margin" means ``WIDE_MARGIN`` times.
    """
    k, headline = document["k"], document["headline"]
    label = headline or "aligned+fused"
    singles = [r for r in document["rows"] if r["variant"] in SINGLE_MODALITIES and r["setting"] == FULL]
    best_single = max(singles, key=lambda r: r["metrics"]["test"][f"recall@{k}"], default=None)
    best_name = best_single["variant"] if best_single else "best single modality"
    mine, concat = _find(document, headline, FULL), _find(document, "concat", FULL)
    missing_mine, missing_concat = _missing_pair(document, headline)
    popularity = _find(document, POPULARITY, FULL)
    return [
        _check(
            f"{label} > best single modality ({best_name}), test",
            (label, _values(mine, "test", k)),
            (best_name, _values(best_single, "test", k)),
            lambda a, b: a > b,
            k,
        ),
        _check(
            f"{label} >= concat, all modalities, test",
            (label, _values(mine, "test", k)),
            ("concat", _values(concat, "test", k)),
            lambda a, b: a >= b,
            k,
        ),
        _check(
            f"{label} > concat, {missing_mine['setting'] if missing_mine else 'one modality 50% missing'}, test",
            (label, _values(missing_mine, "test", k)),
            ("concat", _values(missing_concat, "test", k)),
            lambda a, b: a > b,
            k,
        ),
        _check(
            f"{label} >= {WIDE_MARGIN:g}x popularity, cold-start",
            (label, _values(mine, "cold_start", k)),
            (POPULARITY, _values(popularity, "cold_start", k)),
            lambda a, b: a >= WIDE_MARGIN * b and a > b,
            k,
        ),
    ]


def orderings_line(orderings: Sequence[dict[str, Any]]) -> str:
    """One line: each ordering and whether it holds (yes / NO / not run)."""
    verdict = {True: "yes", False: "NO", None: "not run"}
    return "; ".join(f"{o['name']}: {verdict[o['holds']]}" for o in orderings)


# --- writing it up ------------------------------------------------------------------------------


def _table(document: dict[str, Any], protocol: str, k: int) -> list[str]:
    header = ["variant", *(f"{title}@{k}" for _, title in METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in document["rows"]:
        metrics = row["metrics"].get(protocol)
        if metrics is None:
            continue
        cells = [f"{metrics[f'{name}@{k}']:.4f}" for name, _ in METRICS]
        lines.append("| " + " | ".join([row["label"], *cells]) + " |")
    return lines


def report_table(document: dict[str, Any]) -> str:
    """The ablation as a plain-text table for the terminal: Recall and NDCG at K per protocol.

    With a ranking section, two more lines compare retrieval alone and retrieve-then-rank (test).
    """
    k, protocols = document["k"], document["protocols"]
    width = max([len(row["label"]) for row in document["rows"]] + [len("retrieve-then-rank (test)")])
    columns = [f"{p} {m}@{k}" for p in protocols for m in ("R", "NDCG")]
    lines = [f"  {'variant':<{width}}  " + "  ".join(f"{c:>17}" for c in columns)]
    for row in document["rows"]:
        cells = []
        for protocol in protocols:
            metrics = row["metrics"].get(protocol)
            for name in ("recall", "ndcg"):
                cells.append(f"{metrics[f'{name}@{k}']:17.4f}" if metrics else f"{'-':>17}")
        lines.append(f"  {row['label']:<{width}}  " + "  ".join(cells))
    if "rank" in document and k in document["rank"]["ks"]:
        listwise = document["rank"]["listwise"]
        for label, key in (
            ("retrieval (test)", "retrieval"),
            ("retrieve-then-rank (test)", "retrieve_then_rank"),
        ):
            cells = [f"{listwise[key][f'{name}@{k}']:17.4f}" for name in ("recall", "ndcg")]
            lines.append(f"  {label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def render_markdown(document: dict[str, Any]) -> str:
    """report.md: run date, config summary, orderings line, one table per protocol and K, plots."""
    config = document["config"]
    lines = [
        "# raymm ablation report",
        "",
        f"Run {document['created_at']} on `{document['data_dir']}` with features `{document['features_dir']}` "
        f"({document['n_items']:,} items), {document['elapsed_s']:.0f} s.",
        "",
        "Config: " + ", ".join(f"{key}={value}" for key, value in config.items()) + ".",
        "",
        f"**Orderings (design.md, at K={document['k']}, aligned+fused = "
        f"{document['headline'] or 'none in the variants'}):** " + orderings_line(document["orderings"]),
        "",
    ]
    if document["missing"]:
        missing = document["missing"]
        lines += [
            f"Missing-modality rows: {missing['hidden']:,} of {missing['present']:,} items with "
            f"{missing['modality']} had it hidden (seed {config['seed']}), in a copy at "
            f"`{missing['features_dir']}`. *same model*: trained on all features, evaluated on the copy; "
            "*re-trained*: trained and evaluated on the copy. Popularity does not read features.",
            "",
        ]
    for name, why in document["skipped"].items():
        lines += [f"Protocol `{name}` skipped: {why}.", ""]
    for protocol, about in document["protocols"].items():
        lines += [
            f"## {protocol}",
            "",
            f"{about['description']}; {about['users']:,} users, {about['candidates']:,} candidate items.",
            "",
        ]
        for k in document["ks"]:
            lines += [*_table(document, protocol, k), ""]
    lines += ["## Plots", ""]
    for name, path in document["plots"].items():
        lines.append(f"- {name}: " + (f"![{name}]({path.rsplit('/', 1)[-1]})" if path else "not drawn"))
    return "\n".join(lines) + "\n"


def write_plots(document: dict[str, Any], out_dir: str) -> dict[str, str | None]:
    """Draw every plot into ``out_dir``; returns plot name -> path (None where nothing to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {
        "recall_at_k": _plot_recall_curves,
        "fusion_weights": _plot_fusion_weights,
        "training_curves": _plot_training_curves,
    }
    written: dict[str, str | None] = {}
    for name, draw in plots.items():
        path = io.join(out_dir, f"{name}.png")
        figure = draw(document)
        if figure is None:
            written[name] = None
            continue
        buffer = BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        io.write_bytes(buffer.getvalue(), path)
        written[name] = path
    return written


def _styles(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Line style per row label: one colour per variant, the line pattern says the setting."""
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    return {
        row["label"]: {
            "color": palette(variants.index(row["variant"]) % palette.N),
            "linestyle": "-" if row["setting"] == FULL else "--" if "same model" in row["setting"] else ":",
        }
        for row in rows
    }


def _plot_recall_curves(document: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    styles = _styles(document["rows"])
    protocols = list(document["protocols"])
    figure, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.5), squeeze=False)
    ks = document["ks"]
    for axis, protocol in zip(axes[0], protocols, strict=True):
        for row in document["rows"]:
            if protocol in row["metrics"]:
                recalls = [row["metrics"][protocol][f"recall@{k}"] for k in ks]
                axis.plot(ks, recalls, marker="o", label=row["label"], **styles[row["label"]])
        axis.set(title=f"Recall@K, {protocol}", xlabel="K", ylabel="Recall@K", xticks=ks)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return figure


def _plot_fusion_weights(document: dict[str, Any]) -> Any:
    # A single modality always gets weight 1: only multimodal fusions say something here.
    rows = [r for r in document["rows"] if r["fusion_weights"] and len(r["fusion_weights"]) > 1]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    modalities = sorted({m for r in rows for m in r["fusion_weights"]})
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 4))
    width = 0.8 / len(modalities)
    positions = np.arange(len(rows))
    for k, modality in enumerate(modalities):
        heights = [r["fusion_weights"].get(modality, 0.0) for r in rows]
        axis.bar(positions + k * width, heights, width, label=modality)
    axis.set_xticks(positions + width * (len(modalities) - 1) / 2, [r["label"] for r in rows], rotation=20)
    axis.set(title="Mean fusion weight per modality (items with any modality)", ylabel="weight")
    axis.legend()
    return figure


def _plot_training_curves(document: dict[str, Any]) -> Any:
    # "same model" rows repeat the history of the row they re-evaluate.
    rows = [r for r in document["rows"] if r["history"] and "same model" not in r["setting"]]
    if not rows:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    styles = _styles(rows)
    metric = f"val_ndcg@{document['k']}"
    figure, (loss_axis, val_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        epochs = [h["epoch"] for h in row["history"]]
        style = {"marker": "o", "label": row["label"], **styles[row["label"]]}
        loss_axis.plot(epochs, [h["train_loss"] for h in row["history"]], **style)
        val_axis.plot(epochs, [h.get(metric, np.nan) for h in row["history"]], **style)
    loss_axis.set(title="training loss", xlabel="epoch", ylabel="loss")
    val_axis.set(title=f"validation {metric.removeprefix('val_')}", xlabel="epoch", ylabel=metric)
    for axis in (loss_axis, val_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    val_axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return figure
