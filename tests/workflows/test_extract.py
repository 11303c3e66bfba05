"""The extract workflow (:mod:`raymm.workflows.extract`): which features train and evaluate read, and
an MMRec import whose items carry vectors and no media, which extract leaves alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raymm.config import RaymmConfig, load_config
from raymm.workflows import data
from raymm.workflows.extract import extract, features_for, plan_extract, resolve_features


def mmrec_source(tmp_path: Path) -> Path:
    """A tiny MMRec source (``<tmp>/mm``, dataset ``toy``) with text, image and audio vectors and no media."""
    source = tmp_path / "mm"
    source.mkdir()
    (source / "toy.inter").write_text(
        "userID\titemID\ttimestamp\tx_label\n0\t0\t1\t0\n1\t1\t2\t0\n0\t1\t3\t1\n1\t0\t4\t2\n"
    )
    for modality, dim in (("text", 3), ("image", 2), ("audio", 4)):
        np.save(source / f"{modality}_feat.npy", np.ones((2, dim), dtype=np.float32))
    return source


def _mmrec_import(tmp_path: Path) -> tuple[RaymmConfig, Path]:
    """:func:`mmrec_source` imported to <tmp>/o/data."""
    source = mmrec_source(tmp_path)
    config = load_config(
        None, [f"out={tmp_path / 'o'}", "import.format=mmrec", f"import.source={source}", "import.name=toy"]
    )
    return config, Path(data.import_data(config, progress=False).dataset)


def test_resolve_features_prefers_the_flag_then_extracted_then_imported(tmp_path: Path) -> None:
    _, dataset = _mmrec_import(tmp_path)
    imported = str(dataset / "features.parquet")
    default = tmp_path / "o" / "features"
    assert resolve_features("mine", str(default), str(dataset)) == ("mine", False)
    assert resolve_features(None, str(default), str(dataset)) == (imported, True)
    assert resolve_features(None, str(default), str(tmp_path / "not-a-dataset")) == (str(default), False)
    default.mkdir()
    assert resolve_features(None, str(default), str(dataset)) == (str(default), False)


def test_features_for_says_when_it_falls_back_to_the_imported_ones(tmp_path: Path) -> None:
    config, dataset = _mmrec_import(tmp_path)
    heard: list[str] = []
    chosen = features_for(config, str(dataset), None, heard.append)
    assert chosen == f"{dataset}/features.parquet"
    assert len(heard) == 1 and heard[0].startswith(f"features: {tmp_path / 'o' / 'features'} does not exist")
    assert "(text, image, audio: precomputed:mmrec)" in heard[0]
    assert features_for(config, str(dataset), "mine", heard.append) == "mine" and len(heard) == 1


def test_extract_leaves_an_import_without_media_alone_and_points_at_its_features(tmp_path: Path) -> None:
    config, dataset = _mmrec_import(tmp_path)
    run = extract(config, progress=False)  # the dataset from the config's output root
    assert run.result is None and run.elapsed_s is None
    assert run.imported == f"{dataset}/features.parquet"
    rows = dict(run.summary_rows())
    assert rows["features"] == f"already imported: {run.imported} (text, image, audio: precomputed:mmrec)"
    assert rows["nothing to encode"] == "its items have no text / image / audio to extract"
    assert not (tmp_path / "o" / "features").exists()


def test_the_plan_names_each_modalitys_actor_pool(tmp_path: Path) -> None:
    config = load_config("configs/quickstart.yaml", [f"out={tmp_path}"])
    plan = plan_extract(config, incremental=True)
    assert [step for step, _ in plan.steps][-1] == "only items without features (--incremental)"
    assert len(plan.steps) == len(config.extract.modalities) + 1
    assert {target for _, target in plan.steps} == {str(tmp_path / "features")}
    image = config.extract.image
    steps = "\n".join(step for step, _ in plan.steps)
    assert f"encode image with {image.model or image.kind} (the shared pool: 2-2 actors x 0.5 CPU" in steps
    own = plan_extract(
        load_config("configs/quickstart.yaml", [f"out={tmp_path}", "extract.pool=per_modality"])
    )
    assert "encode image with efficientnet_lite0 (1-1 actors x 0.33 CPU" in "\n".join(s for s, _ in own.steps)
