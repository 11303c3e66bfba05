"""The ablation report: variants by name, the missing-modality copy, the orderings, and one short
real ablation (three variants, one re-trained on the degraded features) writing report.md,
report.json and the plots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from raymm.config import RaymmConfig
from raymm.errors import ConfigError
from raymm.eval.report import ablation, drop_modality, quality_orderings, variant_config
from tests.fixtures import facet_dataset, small_model_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(out: Path, *overrides: str) -> RaymmConfig:
    return small_model_config(
        out,
        "train.epochs=1",
        "evaluate.ks=[10,20]",
        "evaluate.ablation=[text,concat,contrastive+gated,popularity]",
        "evaluate.missing_modality=image",
        "evaluate.missing_rate=0.5",
        "evaluate.missing_retrain=[concat]",
        *overrides,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return facet_dataset(tmp_path_factory.mktemp("report"))


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("text", {"train.modalities": ["text"]}),
        ("concat", {"model.align.method": "none", "model.fusion.method": "concat"}),
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
    assert config.train.storage_path == str(tmp_path / "train")


def test_an_unknown_variant_fails_before_training(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, features = tiny
    config = _config(tmp_path, "evaluate.ablation=[text,clip+gated]")
    with pytest.raises(ConfigError, match="unknown ablation variant 'clip\\+gated'"):
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


def _row(variant: str, setting: str, recall: float, cold: float | None = None) -> dict[str, Any]:
    metrics = {"test": {"recall@20": recall, "ndcg@20": recall / 2}}
    if cold is not None:
        metrics["cold_start"] = {"recall@20": cold, "ndcg@20": cold / 2}
    return {"variant": variant, "setting": setting, "metrics": metrics}


def test_orderings_report_what_holds_and_what_was_not_run() -> None:
    document = {
        "k": 20,
        "headline": "contrastive+gated",
        "rows": [
            _row("text", "all features", 0.10),
            _row("image", "all features", 0.20),
            _row("concat", "all features", 0.30),
            _row("contrastive+gated", "all features", 0.30, cold=0.30),  # ties concat: at least as good
            _row("popularity", "all features", 0.25, cold=0.10),
        ],
    }
    names = ["single", "concat", "missing", "cold"]
    verdicts = dict(zip(names, (o["holds"] for o in quality_orderings(document)), strict=True))
    assert verdicts == {"single": True, "concat": True, "missing": None, "cold": True}
    document["rows"][3] = _row("contrastive+gated", "all features", 0.15, cold=0.15)
    verdicts = dict(zip(names, (o["holds"] for o in quality_orderings(document)), strict=True))
    assert verdicts == {"single": False, "concat": False, "missing": None, "cold": False}


def test_the_ablation_trains_evaluates_and_writes_the_report(
    tiny: tuple[Path, Path], ray_session: None, tmp_path: Path
) -> None:
    data, features = tiny
    before = hashlib.sha256(features.read_bytes()).hexdigest()
    out = tmp_path / "report"
    document = ablation(_config(tmp_path), str(data), str(features), str(out))

    labels = [row["label"] for row in document["rows"]]
    assert labels == [
        "text",
        "concat",
        "contrastive+gated",
        "popularity",
        "concat [image 50% missing, same model]",  # text alone does not read images: no such row
        "contrastive+gated [image 50% missing, same model]",
        "concat [image 50% missing, re-trained]",
    ]
    for name in ("text", "concat", "contrastive+gated", "concat@missing-image-50"):
        assert (out / "models" / name / "manifest.json").is_file()
    for row in document["rows"]:
        assert set(row["metrics"]) == {"test", "cold_start"}
        assert all(0 <= v <= 1 for metrics in row["metrics"].values() for v in metrics.values())
    assert hashlib.sha256(features.read_bytes()).hexdigest() == before

    markdown = (out / "report.md").read_text()
    assert (
        "| variant | Recall@20 | NDCG@20 | HitRate@20 | MRR@20 | Precision@20 | F1@20 | Coverage@20 |"
        in markdown
    )
    assert all(f"| {label} |" in markdown for label in labels)
    assert "## cold_start" in markdown and "aligned+fused = contrastive+gated" in markdown
    orderings = document["orderings"]
    assert [o["holds"] is None for o in orderings] == [False, False, False, False]  # all four judged
    assert (
        json.loads((out / "report.json").read_text())["rows"][0]["metrics"] == document["rows"][0]["metrics"]
    )

    plots = document["plots"]
    assert plots["recall_at_k"] and plots["training_curves"]
    assert plots["fusion_weights"]  # contrastive+gated weighs its three modalities
    for path in filter(None, plots.values()):
        assert Path(path).read_bytes()[:8] == PNG_MAGIC


def test_aligned_and_fused_beats_every_single_modality_on_tiny_data(
    tiny: tuple[Path, Path], ray_session: None, tmp_path: Path
) -> None:
    """design.md's first ordering on the ``tiny`` benchmark, seed 0, with a 10% margin.

    Each modality shows only some facets (text: genre, style, topic; image: style, palette;
    audio: genre, mood) and every facet is some users' main taste, so no single modality can
    rank as well as the fused model.
    """
    data, features = tiny
    config = small_model_config(
        tmp_path,
        "train.epochs=3",
        "evaluate.ks=[20]",
        "evaluate.ablation=[text,image,audio,contrastive+gated]",
        "evaluate.missing_modality=null",
    )
    document = ablation(config, str(data), str(features), str(tmp_path / "report"))
    test = {row["variant"]: row["metrics"]["test"] for row in document["rows"]}
    fused = test.pop("contrastive+gated")
    for metric in ("recall@20", "ndcg@20"):
        best_single = max(metrics[metric] for metrics in test.values())
        assert fused[metric] > 1.1 * best_single, (metric, fused[metric], test)
    assert document["orderings"][0]["holds"] is True
