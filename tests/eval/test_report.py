"""The ablation experiment and its report: variants from the registries, the missing-modality copy,
the orderings, and one short real ablation (two variants trained, the session's model reused, one
re-trained on the degraded features, two baselines) writing report.md, report.json and the plots.

The quality ordering itself (aligned+fused beats every single modality) is a benchmark over
several seeds: bench/quality_synth.py."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from raymm.config import RaymmConfig
from raymm.errors import ConfigError
from raymm.eval.evaluate import baseline_metrics, eval_setup, evaluate_model
from raymm.eval.report import best_single_modality, quality_orderings
from raymm.recommend.blend import BlendSettings
from raymm.workflows.ablation import ablation, drop_modality, headline_variant, variant_config, variants
from tests.conftest import Trained
from tests.fixtures import small_model_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(out: Path, *overrides: str) -> RaymmConfig:
    return small_model_config(
        out,
        "train.epochs=1",
        "evaluate.ks=[10,20]",
        "ablation.variants=[text,concat,contrastive+gated,popularity,content]",
        "ablation.missing_modality=image",
        "ablation.missing_rate=0.5",
        "ablation.missing_retrain=[concat]",
        *overrides,
    )


@pytest.fixture(scope="module")
def tiny(facet_data: tuple[Path, Path]) -> tuple[Path, Path]:
    return facet_data


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("text", {"model.modalities": ["text"]}),
        ("concat", {"model.align.method": "none", "model.fusion.method": "concat"}),
        ("none+gated", {"model.align.method": "none", "model.fusion.method": "gated"}),
        ("contrastive+concat", {"model.align.method": "contrastive", "model.fusion.method": "concat"}),
        ("cca+attention", {"model.align.method": "cca", "model.fusion.method": "attention"}),
        ("kg+gated", {"model.align.method": "kg", "model.fusion.method": "gated"}),
    ],
)
def test_variant_names_become_configs(variant: str, expected: dict[str, Any], tmp_path: Path) -> None:
    config = variant_config(_config(tmp_path), variant, str(tmp_path / "train"))
    for key, value in expected.items():
        node: Any = config
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key
    assert config.train.run.storage_path == str(tmp_path / "train")


def test_variants_come_from_the_registries() -> None:
    from raymm.models.align import ALIGNERS
    from raymm.models.fusion import FUSIONS

    names = set(variants())
    assert {f"{a}+{f}" for a in ALIGNERS for f in FUSIONS} <= names
    assert {"text", "image", "audio", "concat", "popularity", "content"} <= names
    assert not variants()["content"].trained and variants()["kg+gated"].trained


def test_the_default_ablation_measures_alignment_and_fusion_apart(tmp_path: Path) -> None:
    default = RaymmConfig().ablation.variants
    assert {"concat", "none+gated", "contrastive+concat", "contrastive+gated"} <= set(default)
    assert all(name in variants() for name in default)
    config = _config(tmp_path)  # configured: contrastive+gated
    assert headline_variant(config, default) == "contrastive+gated"
    # Without the configured model the headline is a fused aligned variant, never none+ or +concat.
    assert headline_variant(config, ["none+gated", "contrastive+concat", "kg+gated"]) == "kg+gated"
    assert headline_variant(config, ["concat", "none+gated", "contrastive+concat"]) == "contrastive+concat"
    assert headline_variant(config, ["concat", "none+gated"]) is None


def test_an_unknown_variant_fails_before_training(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, features = tiny
    config = _config(tmp_path, "ablation.variants=[text,clip+gated]")
    with pytest.raises(ConfigError, match=r"unknown ablation variant 'clip\+gated'; known variants: text, "):
        ablation(config, str(data), str(features), str(tmp_path / "report"))
    assert not (tmp_path / "report" / "models").exists()


def test_the_missing_modality_copy_leaves_the_input_untouched(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    _, features = tiny
    before = hashlib.sha256(features.read_bytes()).hexdigest()
    summaries = [drop_modality(str(features), str(tmp_path / name), "image", 0.5, seed=3) for name in "ab"]
    assert hashlib.sha256(features.read_bytes()).hexdigest() == before
    original = pq.read_table(features).column("image")
    copies = [pq.read_table(tmp_path / name).sort_by("item_id").column("image") for name in "ab"]
    present = original.is_valid().to_numpy(zero_copy_only=False)
    kept = copies[0].is_valid().to_numpy(zero_copy_only=False)
    assert summaries[0]["present"] == present.sum() and summaries[0]["hidden"] == round(0.5 * present.sum())
    assert (present & ~kept).sum() == summaries[0]["hidden"] and not (kept & ~present).any()
    np.testing.assert_array_equal(kept, copies[1].is_valid().to_numpy(zero_copy_only=False))  # seeded
    assert copies[0].filter(kept).to_pylist() == original.filter(kept).to_pylist()  # the rest is unchanged


def _row(
    variant: str, setting: str, recall: float, cold: float | None = None, validation: float | None = None
) -> dict[str, Any]:
    metrics = {"test": {"recall@20": recall, "ndcg@20": recall / 2}}
    if cold is not None:
        metrics["cold_start"] = {"recall@20": cold, "ndcg@20": cold / 2}
    # By default validation ranks variants as test does.
    return {
        "variant": variant,
        "setting": setting,
        "metrics": metrics,
        "validation_ndcg@20": recall / 2 if validation is None else validation,
    }


def test_orderings_report_what_holds_and_what_was_not_run() -> None:
    document = {
        "k": 20,
        "headline": "contrastive+gated",
        "rows": [
            _row("text", "all features", 0.10, cold=0.20),
            _row("image", "all features", 0.20, cold=0.22),
            _row("concat", "all features", 0.30),
            _row("contrastive+gated", "all features", 0.30, cold=0.30),  # ties concat: at least as good
            _row("popularity", "all features", 0.25, cold=0.01),
            _row("content", "all features", 0.05, cold=0.25),
        ],
    }
    names = ["single", "concat", "missing", "cold vs content", "cold vs single"]
    verdicts = dict(zip(names, (o["holds"] for o in quality_orderings(document)), strict=True))
    assert verdicts == {
        "single": True,
        "concat": True,
        "missing": None,
        "cold vs content": True,
        "cold vs single": True,
    }
    document["rows"][3] = _row("contrastive+gated", "all features", 0.15, cold=0.21)
    verdicts = dict(zip(names, (o["holds"] for o in quality_orderings(document)), strict=True))
    # Cold-start is judged against content and image (best on validation), never popularity.
    assert verdicts == {
        "single": False,
        "concat": False,
        "missing": None,
        "cold vs content": False,
        "cold vs single": False,
    }
    del document["rows"][5]  # no content baseline: that ordering was not run
    assert quality_orderings(document)[3]["holds"] is None


def test_the_best_single_modality_is_chosen_on_validation_not_on_test() -> None:
    document = {
        "k": 20,
        "headline": "contrastive+gated",
        "rows": [
            _row("text", "all features", 0.10, validation=0.09),  # best on validation
            _row("image", "all features", 0.40, validation=0.02),  # best on test
            _row("audio", "all features", 0.05, validation=0.08),
            _row("contrastive+gated", "all features", 0.30),
        ],
    }
    assert best_single_modality(document)["variant"] == "text"  # type: ignore[index]
    single = quality_orderings(document)[0]
    assert single["right"] == "text" and "on validation (text)" in single["name"] and single["holds"]
    for row in document["rows"]:
        row["validation_ndcg@20"] = None  # a report without validation numbers chooses nothing
    assert best_single_modality(document) is None and quality_orderings(document)[0]["holds"] is None


def test_the_ablation_trains_evaluates_and_writes_the_report(trained: Trained, tmp_path: Path) -> None:
    data, features = trained.data, trained.features
    before = hashlib.sha256(features.read_bytes()).hexdigest()
    out = tmp_path / "report"
    config = _config(tmp_path)
    document = ablation(
        config, str(data), str(features), str(out), trained_models={"contrastive+gated": str(trained.model)}
    )

    labels = [row["label"] for row in document["rows"]]
    assert labels == [
        "text",
        "concat",
        "contrastive+gated",
        "popularity",
        "content",
        "concat [image 50% missing, same model]",  # text alone does not read images: no such row
        "contrastive+gated [image 50% missing, same model]",
        "concat [image 50% missing, re-trained]",
    ]
    for name in ("text", "concat", "concat@missing-image-50"):
        assert (out / "models" / name / "manifest.json").is_file()
    assert not (out / "models" / "contrastive+gated").exists()  # reused, not trained again
    baselines = baseline_metrics(eval_setup(config, str(data), str(features)), config.evaluate.ks)
    rows = {row["label"]: row for row in document["rows"]}
    for name in ("popularity", "content"):  # the same evaluator ranks baselines and models
        assert rows[name]["metrics"] == baselines[name]
    # the missing-image copy: exactly half of the items with an image lose it, nothing else changes
    degraded_dir = out / "features-missing-image-50"
    source, degraded = pq.read_table(features), pq.read_table(degraded_dir / "part-00000.parquet")
    present = source.num_rows - source.column("image").null_count
    hidden = round(0.5 * present)
    assert document["missing"] == {
        "features_dir": str(degraded_dir),
        "modality": "image",
        "rate": 0.5,
        "present": present,
        "hidden": hidden,
    }
    assert degraded.column("image").null_count == source.column("image").null_count + hidden
    assert degraded.drop_columns(["image"]).equals(source.drop_columns(["image"]))
    # "same model" is the reused model ranked on that copy, which hides what the full row saw
    same_model = rows["contrastive+gated [image 50% missing, same model]"]
    assert same_model["model_dir"] == str(trained.model)
    on_degraded = eval_setup(config, str(data), str(degraded_dir))
    assert (
        same_model["metrics"]
        == evaluate_model(str(trained.model), on_degraded, config.evaluate.ks)["metrics"]
    )
    assert same_model["metrics"] != rows["contrastive+gated"]["metrics"]
    assert hashlib.sha256(features.read_bytes()).hexdigest() == before
    for label in ("text", "concat", "contrastive+gated", "concat [image 50% missing, re-trained]"):
        row = rows[label]  # every trained row: its validation number, best epoch and curve
        # the served blend's validation NDCG@20, as training measured it when it chose that blend
        recorded = json.loads((Path(row["model_dir"]) / "manifest.json").read_text())["metrics"]
        chosen = BlendSettings.from_metrics(recorded)
        assert chosen is not None and row["val_metric"] == "ndcg@20"
        assert row["validation_ndcg@20"] == pytest.approx(
            recorded["validation_ndcg_by_blend"][chosen.label()], abs=1e-6
        ), label
        assert row["validation_curve"] == [h["val_ndcg@20"] for h in row["history"]]
        assert row["best_epoch"] in range(len(row["history"]))
        assert row["validation_curve"][row["best_epoch"]] == max(row["validation_curve"])
    assert len(rows["text"]["notes"]) == 1 and "inactive" in rows["text"]["notes"][0]  # one modality
    assert rows["concat"]["notes"] == [] and rows["popularity"]["validation_ndcg@20"] is None

    markdown = (out / "report.md").read_text()
    assert (
        "| variant | Recall@20 | NDCG@20 | HitRate@20 | MRR@20 | Precision@20 | F1@20 | Coverage@20 |"
        in markdown
    )
    assert all(f"| {label} |" in markdown for label in labels)
    assert "## cold_start" in markdown and "aligned+fused = contrastive+gated" in markdown
    assert "| variant | best epoch | epochs run | validation NDCG@20 | notes |" in markdown
    orderings = document["orderings"]
    assert [o["holds"] is None for o in orderings] == [False] * 5  # all five judged
    assert (
        json.loads((out / "report.json").read_text())["rows"][0]["metrics"] == document["rows"][0]["metrics"]
    )

    # every plot drawn (contrastive+gated weighs its three modalities: a fusion-weights plot), as
    # a PNG named after it in the report directory
    names = ("recall_at_k", "fusion_weights", "training_curves")
    assert document["plots"] == {name: str(out / f"{name}.png") for name in names}
    for name in names:
        png = (out / f"{name}.png").read_bytes()
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk, first after the magic
        assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR" and width > 100 and height > 100, name
    weights = rows["contrastive+gated"]["fusion_weights"]
    assert set(weights) == {"text", "image", "audio"} and sum(weights.values()) == pytest.approx(1.0)
