"""The two-tower model: cold items, live user history, save/load, and a tiny end-to-end training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raymm.eval.metrics import ItemSets, ranking_metrics
from raymm.models.config import ModelConfig
from raymm.models.errors import ModelLoadError
from raymm.models.losses import sampled_softmax_loss
from raymm.models.towers import CONFIG_FILE, TwoTower

from .conftest import paired_views, random_batch

DIMS = {"text": 12, "image": 10, "audio": 4 * 3}


def _config(pooling: str = "mean", **towers: object) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "align": {"method": "contrastive", "shared_dim": 8, "hidden_dim": 16},
            "fusion": {"method": "gated", "hidden_dim": 16},
            "towers": {"embed_dim": 8, "item_hidden_dim": 16, "user_heads": 2, **towers},
            "user_state": {"pooling": pooling},
        }
    )


def _model(pooling: str = "mean", n_item_ids: int = 0, **towers: object) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(_config(pooling, **towers), DIMS, n_item_ids).eval()


def test_cold_item_gets_a_vector_from_content_alone() -> None:
    model = _model(n_item_ids=5)
    features, present = random_batch(4, DIMS, p_present=1.0)
    cold = model.item_vectors(features, present, torch.zeros(4, dtype=torch.long))
    assert torch.equal(cold, model.item_vectors(features, present))  # no index = all cold
    assert torch.allclose(cold.norm(dim=1), torch.ones(4), atol=1e-5)
    warm = model.item_vectors(features, present, torch.tensor([1, 2, 3, 4]))
    assert not torch.allclose(warm, cold)
    other = {m: x + 1.0 for m, x in features.items()}
    assert not torch.allclose(model.item_vectors(other, present), cold)  # content moves it
    with pytest.raises(ValueError, match=r"item_index must lie in \[0, 5\]"):
        model.item_vectors(features, present, torch.tensor([0, 1, 2, 6]))


@pytest.mark.parametrize("pooling", ["mean", "attention", "transformer"])
def test_user_vector_follows_live_history(pooling: str) -> None:
    model = _model(pooling)
    features, present = random_batch(6, DIMS, p_present=0.8)
    with torch.no_grad():
        items = model.item_vectors(features, present)
        history = items[:4].unsqueeze(0)
        user = model.user_vector(history, torch.ones(1, 4, dtype=torch.bool))
        appended = model.user_vector(items[:5].unsqueeze(0), torch.ones(1, 5, dtype=torch.bool))
        padded = model.user_vector(
            torch.cat([history, torch.randn(1, 3, 8)], dim=1), torch.tensor([[True] * 4 + [False] * 3])
        )
        empty = model.user_vector(torch.zeros(1, 2, 8), torch.zeros(1, 2, dtype=torch.bool))
    assert not torch.allclose(user, appended)
    assert torch.allclose(user, padded, atol=1e-6)  # padding entries never count
    assert torch.isfinite(empty).all() and float(empty.norm()) == pytest.approx(1.0, abs=1e-5)


def _content_parameters(model: TwoTower) -> int:
    """Parameters of the content path: aligner heads, fusion and item MLP (no ids, no temperatures)."""
    tower = model.item_tower
    return sum(
        p.numel() for part in (tower.aligner.heads, tower.fusion, tower.mlp) for p in part.parameters()
    )


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_no_alignment_has_the_capacity_of_contrastive_alignment(fusion: str) -> None:
    # The ablation's none+<fusion> and contrastive+<fusion> must differ only in the alignment loss.
    counts = {}
    for method in ("none", "contrastive"):
        config = ModelConfig.model_validate(
            {"align": {"method": method, "hidden_dim": 32}, "fusion": {"method": fusion}}
        )
        counts[method] = _content_parameters(TwoTower(config, DIMS, n_item_ids=3))
    assert counts["none"] == counts["contrastive"]


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    config = _config("transformer")
    config.align.pca_dim = 6
    torch.manual_seed(0)
    model = TwoTower(config, DIMS, n_item_ids=4)
    features, present = paired_views(20, DIMS)
    model.fit_alignment(features, present).eval()
    index = torch.arange(20) % 5
    items = model.item_vectors(features, present, index)
    users = model.user_vector(items[:6].reshape(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))

    model.save_pretrained(tmp_path / "model")
    loaded = TwoTower.from_pretrained(tmp_path / "model", expected_dims=DIMS)
    assert loaded.config == config and loaded.modalities == list(DIMS) and not loaded.training
    assert loaded.n_item_ids == 4  # from the data, recorded beside the config
    assert torch.equal(loaded.item_vectors(features, present, index), items)
    assert torch.equal(
        loaded.user_vector(items[:6].reshape(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)), users
    )


def test_loading_refuses_mismatched_dimensions_and_versions(tmp_path: Path) -> None:
    directory = _model().save_pretrained(tmp_path / "model")
    with pytest.raises(ModelLoadError, match="image: saved model expects 10-dim input, features have 512"):
        TwoTower.from_pretrained(directory, expected_dims={**DIMS, "image": 512})
    with pytest.raises(ModelLoadError, match=r"modalities \['audio', 'image', 'text'\], the features have"):
        TwoTower.from_pretrained(directory, expected_dims={"text": 12})
    document = json.loads((directory / CONFIG_FILE).read_text())
    (directory / CONFIG_FILE).write_text(json.dumps({**document, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="format version 99"):
        TwoTower.from_pretrained(directory)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        TwoTower.from_pretrained(tmp_path / "nothing-here")


@pytest.mark.parametrize("n_item_ids", [0, 4])
def test_a_model_saved_before_modalities_and_item_ids_moved_into_its_config_loads(
    tmp_path: Path, n_item_ids: int
) -> None:
    # Until model.modalities and model.item_id_embeddings existed they were train keys, so an
    # older config.json has neither: the model loads, its id switch read from its weights.
    directory = _model(n_item_ids=n_item_ids).save_pretrained(tmp_path / "model")
    document = json.loads((directory / CONFIG_FILE).read_text())
    for key in ("modalities", "item_id_embeddings"):
        del document["config"][key]
    (directory / CONFIG_FILE).write_text(json.dumps(document))
    loaded = TwoTower.from_pretrained(directory, expected_dims=DIMS)
    assert loaded.config.item_id_embeddings is (n_item_ids > 0)
    assert loaded.config.modalities is None and loaded.modalities == list(DIMS)
    assert loaded.n_item_ids == n_item_ids


def test_loading_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    directory = _model().save_pretrained(tmp_path / "model")
    document = json.loads((directory / CONFIG_FILE).read_text())
    document["config"]["towers"]["embed_dim"] = 16
    (directory / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(ModelLoadError, match="weights do not fit the saved config"):
        TwoTower.from_pretrained(directory)


def test_loading_an_old_no_alignment_model_says_to_retrain(tmp_path: Path) -> None:
    # Before 'none' took contrastive's MLP heads its heads were linear whatever hidden_dim said.
    config = _config()
    config.align.method, config.align.hidden_dim = "none", 0
    directory = TwoTower(config, DIMS).save_pretrained(tmp_path / "model")
    document = json.loads((directory / CONFIG_FILE).read_text())
    document["config"]["align"]["hidden_dim"] = 256
    (directory / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(ModelLoadError, match=r"(?s)do not fit.*one linear head per modality.*re-train"):
        TwoTower.from_pretrained(directory)


def test_loss_needs_log_q_when_correction_is_on() -> None:
    model = _model()
    features, present = random_batch(4, DIMS)
    positive = model.encode_items(features, present)
    users = model.user_vector(positive.vectors.unsqueeze(1), torch.ones(4, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="log_q"):
        model.loss(users, positive)
    parts = model.loss(users, positive, log_q=torch.zeros(4))
    weight = model.config.loss.align_weight
    assert parts.total.item() == pytest.approx((parts.rec + weight * parts.align).item(), rel=1e-6)


def _toy_problem(
    n_items: int = 300, n_users: int = 200, n_clusters: int = 5, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Items in latent clusters visible only in the image features; each user likes one cluster."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, n_clusters, n_items)
    centroids = rng.normal(size=(n_clusters, DIMS["image"])) * 2
    features = {
        "text": torch.from_numpy(rng.normal(size=(n_items, DIMS["text"]))).float(),
        "image": torch.from_numpy(centroids[cluster] + rng.normal(size=(n_items, DIMS["image"]))).float(),
        "audio": torch.from_numpy(rng.normal(size=(n_items, DIMS["audio"]))).float(),
    }
    present = {m: torch.from_numpy(rng.random(n_items) < 0.9) for m in DIMS}
    present["image"][:] = True
    train, test = [], []
    for user in range(n_users):
        liked = rng.permutation(np.flatnonzero(cluster == user % n_clusters))
        train.append(liked[:12])
        test.append(liked[12:17])
    return features, present, cluster, train, test


def test_two_tower_learns_a_toy_preference_far_above_random() -> None:
    torch.manual_seed(0)
    features, present, _, train, test = _toy_problem()
    config = _config("attention")
    config.loss.logq_correction = False
    model = TwoTower(config, DIMS)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(1)
    history_length = 5
    for _ in range(300):
        users = rng.integers(0, len(train), 32)
        picks = np.stack([rng.choice(train[u], history_length + 1, replace=False) for u in users])
        catalog = model.encode_items(features, present)  # 300 items: cheap to encode every step
        positive_ids = torch.from_numpy(picks[:, -1])
        history = catalog.vectors[torch.from_numpy(picks[:, :history_length])]
        user_vectors = model.user_vector(history, torch.ones(32, history_length, dtype=torch.bool))
        loss = model.loss(user_vectors, catalog.select(positive_ids), item_ids=positive_ids).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        item_vectors = model.item_vectors(features, present)
        histories = torch.from_numpy(np.stack([t[-history_length:] for t in train]))
        user_vectors = model.user_vector(
            item_vectors[histories], torch.ones(len(train), history_length, dtype=torch.bool)
        )
    truth, seen = ItemSets.from_lists(test), ItemSets.from_lists(train)
    learned = ranking_metrics(truth, user_vectors=user_vectors, item_vectors=item_vectors, seen=seen, ks=[10])
    random_scores = np.random.default_rng(2).random((len(train), 300))
    chance = ranking_metrics(truth, scores=random_scores, seen=seen, ks=[10])
    assert learned["recall@10"] > 3 * chance["recall@10"], (learned, chance)
    assert learned["recall@10"] > 0.12


def _mean_cosine(vectors: torch.Tensor) -> float:
    similarity = vectors @ vectors.T
    n = vectors.shape[0]
    return float((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))


def test_items_and_users_start_distinct_at_default_sizes() -> None:
    # Default biases put every item (cosine ~0.95) and user (~0.999) on one direction at init,
    # a point the recommendation loss cannot leave; see raymm.models.layers.
    torch.manual_seed(0)
    dims = {"text": 64, "image": 96, "audio": 80}
    model = TwoTower(ModelConfig(), dims).eval()
    features, present = random_batch(256, dims, p_present=0.9)
    with torch.no_grad():
        items = model.item_vectors(features, present)
        histories = items[torch.randint(0, 256, (128, 10))]
        users = model.user_vector(histories, torch.ones(128, 10, dtype=torch.bool))
    assert abs(_mean_cosine(items)) < 0.3
    assert abs(_mean_cosine(users)) < 0.6


def test_recommendation_temperature_is_learned_and_clamped() -> None:
    model = _model()
    assert "log_temperature" in dict(model.named_parameters())
    assert float(model.temperature.detach()) == pytest.approx(model.config.loss.temperature.initial)
    with torch.no_grad():
        model.log_temperature.fill_(-10.0)
    assert float(model.temperature.detach()) == pytest.approx(model.config.loss.temperature.min)
    config = _config()
    config.loss.temperature.learn = False
    assert "log_temperature" not in dict(TwoTower(config, DIMS).named_parameters())


def test_partial_logq_correction_scales_the_log_sampling_probabilities() -> None:
    """``loss.logq_correction`` 0.5 is the loss with half of log q subtracted; 0 and false are none."""
    features, present = random_batch(4, DIMS, p_present=1.0)
    log_q = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    ids = torch.arange(4)

    def rec_loss(weight: object, scale: float | None) -> tuple[float, float]:
        model = _model()
        model.config.loss.logq_correction = ModelConfig.model_validate(
            {"loss": {"logq_correction": weight}}
        ).loss.logq_correction
        with torch.no_grad():
            items = model.encode_items(features, present)
            users = model.user_vector(items.vectors.unsqueeze(1), torch.ones(4, 1, dtype=torch.bool))
            got = model.loss(users, items, item_ids=ids, log_q=log_q).rec
            expected = sampled_softmax_loss(
                users,
                items.vectors,
                temperature=model.temperature,
                item_ids=ids,
                log_q=None if scale is None else scale * log_q,
            )
        return float(got), float(expected)

    for weight, scale in [(0.5, 0.5), (1.0, 1.0), (True, 1.0), (0.0, None), (False, None)]:
        got, expected = rec_loss(weight, scale)
        assert got == pytest.approx(expected, rel=1e-6), weight
    assert rec_loss(0.5, 0.5)[0] != pytest.approx(rec_loss(1.0, 1.0)[0], rel=1e-3)
    with pytest.raises(ValueError, match="logq_correction"):
        ModelConfig.model_validate({"loss": {"logq_correction": 1.5}})
