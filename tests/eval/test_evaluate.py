"""``raymm evaluate`` on the session's trained model: both protocols, seen-item exclusion, recall
against the recommended lists, popularity against a direct computation, the content baseline,
the popularity fallback, and datasets without cold items."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raymm.eval.evaluate import PROTOCOLS, eval_setup, evaluate, served_scorer
from raymm.models.artifact import load_artifact
from raymm.recommend.blend import BlendSettings
from raymm.recommend.scorers import PopularityScorer
from tests.conftest import Trained

POSITIVE = ["click", "like", "purchase", "play", "view"]


@pytest.fixture(scope="module")
def result(trained: Trained) -> dict:
    return evaluate(trained.config, str(trained.data), str(trained.features), str(trained.model))


def test_both_protocols_are_evaluated_for_the_model_and_both_baselines(
    trained: Trained, result: dict
) -> None:
    assert set(result["protocols"]) == set(PROTOCOLS) and result["skipped"] == {}
    cold_items = pq.read_table(trained.data / "cold_items.parquet").num_rows
    assert result["protocols"]["cold_start"]["candidates"] == cold_items
    for source in ("model", "popularity", "content"):
        assert set(result[source]["metrics"]) == set(PROTOCOLS)
    # the model learned: it beats popularity on test and the content baseline on cold items
    assert (
        result["model"]["metrics"]["test"]["recall@20"] > result["popularity"]["metrics"]["test"]["recall@20"]
    )
    assert (
        result["model"]["metrics"]["cold_start"]["recall@20"]
        > result["popularity"]["metrics"]["cold_start"]["recall@20"]
    )
    weights = result["model"]["fusion_weights"]  # the default gated fusion weighs modalities
    assert set(weights) == {"text", "image", "audio"} and sum(weights.values()) == pytest.approx(
        1.0, abs=1e-4
    )


def test_the_validation_ndcg_is_the_one_training_chose_the_fallback_by(
    trained: Trained, result: dict
) -> None:
    model = result["model"]
    recorded = load_artifact(trained.model).manifest.metrics
    settings = BlendSettings.from_metrics(recorded)
    assert settings is not None and model["blend"] == settings.label()
    chosen = recorded["validation_ndcg_by_blend"][settings.label()]
    assert model["validation_ndcg"] == pytest.approx(chosen, abs=1e-6)
    # what is printed side by side: the served model, its parts, and both popularity yardsticks
    for protocol in PROTOCOLS:
        served, personal = model["metrics"][protocol], model["personal_metrics"][protocol]
        assert set(served) == set(personal) == set(model["two_tower_metrics"][protocol])
        assert set(result["recent_popularity"]["metrics"][protocol]) == set(served)
    if settings.collab_weight == 0:
        assert model["personal_metrics"] == model["two_tower_metrics"]
    assert model["best_epoch"] == recorded["best_epoch"] and model["notes"] == []


def test_seen_items_are_never_recommended(trained: Trained) -> None:
    setup = eval_setup(trained.config, str(trained.data), str(trained.features))
    artifact = load_artifact(trained.model, expected_dims=setup.catalog.dims)
    scorer, _ = served_scorer(artifact, setup, trained.config.evaluate.ks)
    for protocol in setup.protocols.values():
        users = protocol.users
        top = scorer.recommend(
            users.history, 20, exclude=users.seen, candidates=protocol.candidates
        ).rows.numpy()
        seen = np.zeros((users.seen.n_users, setup.catalog.n_items), dtype=bool)
        seen[np.repeat(np.arange(users.seen.n_users), users.seen.sizes), users.seen.indices] = True
        owners = np.repeat(np.arange(len(top)), top.shape[1]).reshape(top.shape)
        real = top >= 0
        assert users.seen.indices.size > 0 and real.any()
        assert not seen[owners[real], top[real]].any()
        if protocol.candidates is not None:
            assert np.isin(top[real], protocol.candidates).all()


def test_recall_agrees_with_the_recommended_lists(trained: Trained, result: dict) -> None:
    setup = eval_setup(trained.config, str(trained.data), str(trained.features))
    scorer, _ = served_scorer(load_artifact(trained.model), setup, trained.config.evaluate.ks)
    users = setup.protocols["test"].users
    top = scorer.recommend(users.history, 10, exclude=users.seen).rows.numpy()
    truth = users.truth
    relevant = np.zeros((truth.n_users, setup.catalog.n_items), dtype=bool)
    relevant[np.repeat(np.arange(truth.n_users), truth.sizes), truth.indices] = True
    hits = np.take_along_axis(relevant, np.clip(top, 0, None), axis=1) & (top >= 0)
    has_truth = truth.sizes > 0
    recall = (hits.sum(axis=1)[has_truth] / truth.sizes[has_truth]).mean()
    assert result["model"]["metrics"]["test"]["recall@10"] == pytest.approx(recall, abs=1e-6)


def _direct_popularity(data: Path, catalog_ids: np.ndarray, seed: int) -> dict[str, dict[str, float]]:
    """Recall@10 / HitRate@10 of most-popular, user by user, from the raw tables."""
    tables = {s: pq.read_table(data / f"{s}.parquet") for s in ("train", "validation", "test", "cold_start")}
    context = pa.concat_tables([tables["train"], tables["validation"]])
    positive = context.filter(pc.is_in(context.column("event"), pa.array(POSITIVE)))
    counts = dict(
        zip(*positive.group_by("item_id").aggregate([("item_id", "count")]).to_pydict().values(), strict=True)
    )
    count_of = np.array([counts.get(i, 0) for i in catalog_ids])
    tie_break = np.random.default_rng(seed).permutation(len(catalog_ids))
    ranking = catalog_ids[np.lexsort((-tie_break, -count_of))]  # most events first, ties by the seeded order
    seen_by: dict[str, set[str]] = {}
    for user, item in zip(context["user_id"].to_pylist(), context["item_id"].to_pylist(), strict=True):
        seen_by.setdefault(user, set()).add(item)
    cold = set(pq.read_table(data / "cold_items.parquet").column("item_id").to_pylist())
    results = {}
    for protocol, held_out, allowed in (
        ("test", tables["test"], None),
        ("cold_start", tables["cold_start"], cold),
    ):
        truth_by: dict[str, set[str]] = {}
        for row in held_out.filter(pc.is_in(held_out.column("event"), pa.array(POSITIVE))).to_pylist():
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


def test_popularity_matches_a_direct_computation(trained: Trained, result: dict) -> None:
    catalog_ids = np.sort(
        pq.read_table(trained.data / "items.parquet").column("item_id").to_numpy(zero_copy_only=False)
    )
    direct = _direct_popularity(trained.data, catalog_ids.astype(object), trained.config.seed)
    for protocol, expected in direct.items():
        for key, value in expected.items():
            assert result["popularity"]["metrics"][protocol][key] == pytest.approx(value, abs=1e-9), (
                protocol,
                key,
            )


def test_users_without_history_get_the_popular_items(trained: Trained) -> None:
    """The fallback answers an empty history with exactly the popularity ranking (recent
    popularity when training chose a half-life on validation)."""
    setup = eval_setup(trained.config, str(trained.data), str(trained.features))
    scorer, _ = served_scorer(load_artifact(trained.model), setup, trained.config.evaluate.ks)
    empty = np.full((1, trained.config.model.user_state.max_history), -1)
    served = scorer.recommend(empty, 10).rows
    half_life = scorer.popularity.half_life_days
    assert half_life == load_artifact(trained.model).manifest.metrics["fallback_half_life_days"]
    popular = PopularityScorer(half_life_days=half_life).fit(setup.context).recommend(empty, 10).rows
    assert served.tolist() == popular.tolist()
    untrained_vector = scorer.primary.recommend(empty, 10).rows  # what the model alone would say
    assert served.tolist() != untrained_vector.tolist()


def test_a_dataset_without_cold_items_skips_that_protocol(trained: Trained, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(trained.data, copy)
    manifest = json.loads((copy / "dataset.json").read_text())
    manifest["files"] = [
        f for f in manifest["files"] if f not in ("cold_items.parquet", "cold_start.parquet")
    ]
    (copy / "dataset.json").write_text(json.dumps(manifest))
    result = evaluate(trained.config, str(copy), str(trained.features), str(trained.model))
    assert list(result["protocols"]) == ["test"] and list(result["model"]["metrics"]) == ["test"]
    assert "no cold_items" in result["skipped"]["cold_start"]


def test_the_command_prints_the_headline_numbers_and_writes_json(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raymm.cli import main

    argv = trained.evaluate_argv(trained.model)
    assert main([*argv, "--out", str(tmp_path), "--set", "evaluate.ks=[10,20]", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "raymm evaluate" in printed and "cold_start recall@20" in printed and "content" in printed
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(written["model"]["metrics"]) == set(PROTOCOLS)
