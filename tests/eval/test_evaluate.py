"""``raymm evaluate`` on a tiny dataset and one short real Ray Train run: both protocols, seen-item
exclusion, the popularity baseline against a direct computation, datasets without cold items."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raymm.config import RaymmConfig
from raymm.eval.evaluate import PROTOCOLS, eval_setup, evaluate, popularity_ranking, top_k_items
from raymm.models.artifact import load_artifact
from raymm.train.trainer import train
from tests.fixtures import facet_dataset, small_model_config

POSITIVE = ["click", "like", "purchase", "play", "view"]


def _config(out: Path) -> RaymmConfig:
    return small_model_config(out, "train.epochs=1", "evaluate.ks=[5,10,20]")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> tuple[RaymmConfig, str, str, str]:
    root = tmp_path_factory.mktemp("evaluate")
    data, features = facet_dataset(root)
    config = _config(root)
    train(config, str(data), str(features), str(root / "model"))
    return config, str(data), str(features), str(root / "model")


def test_both_protocols_have_metrics_in_range(trained: tuple[RaymmConfig, str, str, str]) -> None:
    config, data, features, model = trained
    result = evaluate(config, data, features, model)
    assert set(result["protocols"]) == set(PROTOCOLS) and result["skipped"] == {}
    assert (
        result["protocols"]["cold_start"]["candidates"]
        == pq.read_table(f"{data}/cold_items.parquet").num_rows
    )
    for source in (result["model"], result["popularity"]):
        for protocol in PROTOCOLS:
            metrics = source["metrics"][protocol]
            assert {f"{name}@{k}" for name in ("recall", "ndcg", "coverage") for k in (5, 10, 20)} <= set(
                metrics
            )
            assert all(0.0 <= value <= 1.0 for value in metrics.values()), metrics
    assert result["protocols"]["test"]["users"] > 0 and result["protocols"]["cold_start"]["users"] > 0
    weights = result["model"]["fusion_weights"]  # the default gated fusion weighs modalities
    assert set(weights) == {"text", "image", "audio"} and sum(weights.values()) == pytest.approx(
        1.0, abs=1e-4
    )


def test_seen_items_are_never_recommended(trained: tuple[RaymmConfig, str, str, str]) -> None:
    config, data, features, model_dir = trained
    setup = eval_setup(config, data, features)
    model = load_artifact(model_dir, expected_dims=setup.catalog.dims).model
    for protocol in setup.protocols.values():
        users = protocol.users
        top = top_k_items(model, setup.catalog, users, 20, candidates=protocol.candidates)
        seen = np.zeros((users.seen.n_users, setup.catalog.n_items), dtype=bool)
        seen[np.repeat(np.arange(users.seen.n_users), users.seen.sizes), users.seen.indices] = True
        owners = np.repeat(np.arange(len(top)), top.shape[1]).reshape(top.shape)
        real = top >= 0
        assert users.seen.indices.size > 0 and real.any()
        assert not seen[owners[real], top[real]].any()
        if protocol.candidates is not None:
            assert np.isin(top[real], protocol.candidates).all()


def test_recall_agrees_with_the_recommended_lists(trained: tuple[RaymmConfig, str, str, str]) -> None:
    config, data, features, model_dir = trained
    setup = eval_setup(config, data, features)
    model = load_artifact(model_dir).model
    users = setup.protocols["test"].users
    top = top_k_items(model, setup.catalog, users, 10)
    truth = users.truth
    owners = np.repeat(np.arange(truth.n_users), truth.sizes)
    relevant = np.zeros((truth.n_users, setup.catalog.n_items), dtype=bool)
    relevant[owners, truth.indices] = True
    hits = np.take_along_axis(relevant, np.clip(top, 0, None), axis=1) & (top >= 0)
    has_truth = truth.sizes > 0
    recall = (hits.sum(axis=1)[has_truth] / truth.sizes[has_truth]).mean()
    result = evaluate(config, data, features, model_dir)
    assert result["model"]["metrics"]["test"]["recall@10"] == pytest.approx(recall, abs=1e-6)


def _direct_popularity(data: str, catalog_ids: np.ndarray, seed: int) -> dict[str, dict[str, float]]:
    """Recall@10 / HitRate@10 of most-popular, user by user, from the raw tables."""
    tables = {s: pq.read_table(f"{data}/{s}.parquet") for s in ("train", "validation", "test", "cold_start")}
    context = pa.concat_tables([tables["train"], tables["validation"]])
    positive = context.filter(pc.is_in(context.column("event"), pa.array(POSITIVE)))
    counts = dict(
        zip(*positive.group_by("item_id").aggregate([("item_id", "count")]).to_pydict().values(), strict=True)
    )
    count_of = np.array([counts.get(i, 0) for i in catalog_ids])
    scores = popularity_ranking(count_of, seed)
    ranking = catalog_ids[np.argsort(-scores)]
    assert (np.diff(count_of[np.argsort(-scores)]) <= 0).all()  # ordered by popularity
    seen_by: dict[str, set[str]] = {}
    for user, item in zip(context["user_id"].to_pylist(), context["item_id"].to_pylist(), strict=True):
        seen_by.setdefault(user, set()).add(item)
    cold = set(pq.read_table(f"{data}/cold_items.parquet").column("item_id").to_pylist())
    results = {}
    for protocol, held_out, allowed in (
        ("test", tables["test"], None),
        ("cold_start", tables["cold_start"], cold),
    ):
        truth_by: dict[str, set[str]] = {}
        rows = held_out.filter(pc.is_in(held_out.column("event"), pa.array(POSITIVE))).to_pylist()
        for row in rows:
            truth_by.setdefault(row["user_id"], set()).add(row["item_id"])
        recall, hit = [], []
        for user, truth in truth_by.items():
            seen = seen_by.get(user, set())
            top = [i for i in ranking if i not in seen and (allowed is None or i in allowed)][:10]
            found = len(truth & set(top))
            recall.append(found / len(truth))
            hit.append(float(found > 0))
        results[protocol] = {"recall@10": float(np.mean(recall)), "hit_rate@10": float(np.mean(hit))}
    return results


def test_popularity_matches_a_direct_computation(trained: tuple[RaymmConfig, str, str, str]) -> None:
    config, data, features, model = trained
    result = evaluate(config, data, features, model)
    catalog_ids = np.sort(
        pq.read_table(f"{data}/items.parquet").column("item_id").to_numpy(zero_copy_only=False)
    )
    direct = _direct_popularity(data, catalog_ids.astype(object), config.seed)
    for protocol, expected in direct.items():
        for key, value in expected.items():
            assert result["popularity"]["metrics"][protocol][key] == pytest.approx(value, abs=1e-9), (
                protocol,
                key,
            )


def test_a_dataset_without_cold_items_skips_that_protocol(
    trained: tuple[RaymmConfig, str, str, str], tmp_path: Path
) -> None:
    config, data, features, model = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    manifest = json.loads((copy / "dataset.json").read_text())
    manifest["files"] = [
        f for f in manifest["files"] if f not in ("cold_items.parquet", "cold_start.parquet")
    ]
    (copy / "dataset.json").write_text(json.dumps(manifest))
    result = evaluate(config, str(copy), features, model)
    assert list(result["protocols"]) == ["test"] and list(result["model"]["metrics"]) == ["test"]
    assert "no cold_items" in result["skipped"]["cold_start"]


def test_the_command_prints_the_headline_numbers_and_writes_json(
    trained: tuple[RaymmConfig, str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raymm.cli import main

    _, data, features, model = trained
    argv = ["evaluate", "--data", data, "--features", features, "--model", model, "--out", str(tmp_path)]
    assert main([*argv, "--set", "evaluate.ks=[10,20]", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "raymm evaluate" in printed and "cold_start recall@20" in printed and "popularity" in printed
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(written["model"]["metrics"]) == set(PROTOCOLS)
