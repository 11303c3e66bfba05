"""Item indexes: exact equals brute force, exclusion, incremental add, faiss recall, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymm.recommend.index import FAISS_MIN_ITEMS, INDEXES, ExactIndex, FaissIndex, IndexChoice, build_index
from raymm.recommend.itemsets import ItemSets

KINDS = sorted(INDEXES)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, dim: int, n_clusters: int) -> np.ndarray:
    """Unit vectors around ``n_clusters`` random centres, like item embeddings."""
    centres = unit_rows(rng, n_clusters, dim)
    vectors = centres[rng.integers(0, n_clusters, n)] + 0.08 * rng.standard_normal((n, dim)).astype(
        np.float32
    )
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def index_of(kind: str, vectors: np.ndarray) -> ExactIndex | FaissIndex:
    # nprobe = nlist: every list is scored, so faiss must agree with exact search here.
    return ExactIndex(vectors) if kind == "exact" else FaissIndex(vectors, nlist=8, nprobe=8, threads=1)


def test_exact_equals_brute_force_argsort() -> None:
    rng = np.random.default_rng(0)
    items, queries = rng.standard_normal((3000, 24)).astype(np.float32), rng.standard_normal((7, 24))
    result = ExactIndex(items).search(queries, 20)
    scores = queries.astype(np.float32) @ items.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(result.rows.numpy(), expected)
    np.testing.assert_allclose(result.scores.numpy(), np.take_along_axis(scores, expected, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_excluded_rows_never_returned_and_padding_when_all_excluded(kind: str) -> None:
    rng = np.random.default_rng(1)
    items = unit_rows(rng, 400, 8)
    index = index_of(kind, items)
    queries = unit_rows(rng, 3, 8)
    unexcluded = index.search(queries, 10)
    # Query 0 excludes its own top 5, query 1 excludes every item, query 2 nothing.
    exclude = ItemSets.from_lists([unexcluded.rows[0, :5].numpy(), np.arange(400), []])
    result = index.search(queries, 10, exclude)
    np.testing.assert_array_equal(result.rows[0, :5].numpy(), unexcluded.rows[0, 5:].numpy())
    assert not np.isin(result.rows[0].numpy(), unexcluded.rows[0, :5].numpy()).any()
    assert (result.rows[1] == -1).all() and torch.isinf(result.scores[1]).all()
    np.testing.assert_array_equal(result.rows[2].numpy(), unexcluded.rows[2].numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_fewer_items_than_k_pads(kind: str) -> None:
    index = index_of(kind, unit_rows(np.random.default_rng(2), 400, 8))
    result = index.search(unit_rows(np.random.default_rng(3), 2, 8), 500)
    assert result.rows.shape == (2, 500)
    assert (result.rows[:, :400] >= 0).all() and (result.rows[:, 400:] == -1).all()
    assert (result.scores[:, 400:] == float("-inf")).all()


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_add_is_found(kind: str) -> None:
    rng = np.random.default_rng(4)
    index = build_index(kind, clustered(rng, 5000, 16, 20))  # type: ignore[arg-type]
    # Cold items arrive one at a time, then a few at once; each, searched for, ranks first.
    cold = unit_rows(rng, 4, 16)
    added = [index.add(cold[:1]), index.add(cold[1:2]), index.add(cold[2:])]
    assert [rows.tolist() for rows in added] == [[5000], [5001], [5002, 5003]]
    assert index.n_items == 5004
    result = index.search(cold, 3)
    np.testing.assert_array_equal(result.rows[:, 0].numpy(), np.arange(5000, 5004))
    np.testing.assert_allclose(result.scores[:, 0].numpy(), 1.0, rtol=1e-5)


def test_exact_buffer_grows_amortised() -> None:
    index = ExactIndex(np.zeros((1, 4), dtype=np.float32))
    capacities = set()
    for _ in range(100):
        index.add(np.ones((1, 4), dtype=np.float32))
        capacities.add(index.nbytes)
    assert index.n_items == 101 and len(capacities) <= 8  # doubling: log2(101) re-allocations


def test_exact_replace_updates_an_item_in_place_and_refuses_bad_rows() -> None:
    rng = np.random.default_rng(6)
    index = ExactIndex(unit_rows(rng, 50, 8))
    updated = unit_rows(rng, 2, 8)
    index.replace(np.array([7, 30]), updated)
    assert index.n_items == 50
    result = index.search(updated, 1)
    np.testing.assert_array_equal(result.rows[:, 0].numpy(), [7, 30])
    np.testing.assert_allclose(result.scores[:, 0].numpy(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 50\), got min 7 max 50"):
        index.replace(np.array([7, 50]), updated)
    with pytest.raises(ValueError, match=r"rows must be \(2,\) for 2 vectors"):
        index.replace(np.array([7]), updated)
    np.testing.assert_array_equal(index.vectors[[7, 30]], updated)  # a refused call changes nothing


@pytest.mark.parametrize(("encoding", "bytes_per_vector"), [("flat", 32 * 4), ("sq8", 32)])
def test_faiss_recall_against_exact_on_clustered_items(encoding: str, bytes_per_vector: int) -> None:
    rng = np.random.default_rng(5)
    items = clustered(rng, 20_000, 32, 200)
    queries = clustered(rng, 200, 32, 200)
    exact = ExactIndex(items).search(queries, 50).rows.numpy()
    index = FaissIndex(items, threads=1, seed=0, encoding=encoding)  # type: ignore[arg-type]
    assert index.fallback_reason is None and index.nlist > 1
    found = index.search(queries, 50).rows.numpy()
    recall = np.mean([np.isin(found[q], exact[q]).mean() for q in range(len(queries))])
    assert recall >= 0.9, recall
    # Codes plus an int64 id per item, plus the centroids: sq8 stores a quarter of flat's vectors.
    assert index.nbytes == 20_000 * (bytes_per_vector + 8) + index.nlist * 32 * 4


def test_faiss_sq8_adds_and_updates_without_a_rebuild() -> None:
    rng = np.random.default_rng(8)
    index = FaissIndex(clustered(rng, 5000, 16, 20), nlist=8, nprobe=8, threads=1, encoding="sq8")
    cold = unit_rows(rng, 3, 16)
    assert index.add(cold).tolist() == [5000, 5001, 5002]
    # 8-bit codes score approximately, but an added item searched for by its own vector ranks first.
    np.testing.assert_array_equal(index.search(cold, 3).rows[:, 0].numpy(), [5000, 5001, 5002])
    moved = unit_rows(rng, 1, 16)
    copy = index.updated(np.array([17]), moved)
    assert copy.search(moved, 1).rows[0, 0].item() == 17 and copy.n_items == 5003
    assert index.search(moved, 1).rows[0, 0].item() != 17  # the original keeps row 17's old vector


def test_faiss_refuses_an_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="encoding must be 'flat' or 'sq8', got 'pq'"):
        FaissIndex(unit_rows(np.random.default_rng(9), 400, 8), encoding="pq")  # type: ignore[arg-type]


def test_faiss_falls_back_to_exact_when_too_few_vectors() -> None:
    items = unit_rows(np.random.default_rng(6), 60, 8)
    index = FaissIndex(items, threads=1)
    assert index.fallback_reason is not None and "60 vectors" in index.fallback_reason
    queries = unit_rows(np.random.default_rng(7), 4, 8)
    np.testing.assert_array_equal(
        index.search(queries, 10).rows.numpy(), ExactIndex(items).search(queries, 10).rows.numpy()
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda index: index.search(np.zeros((2, 5), np.float32), 3), "width 8"),
        (lambda index: index.search(np.zeros(8, np.float32), 3), "2-D"),
        (lambda index: index.search(np.zeros((2, 8), np.float32), 0), "k must be at least 1, got 0"),
        (lambda index: index.search(np.full((2, 8), np.nan, np.float32), 3), "NaN"),
        (lambda index: index.add(np.array([[np.inf] * 8], np.float32)), "rows \\[0\\]"),
        (lambda index: index.add(np.zeros((1, 7), np.float32)), "width 8"),
        (lambda index: index.search(np.zeros((2, 8), np.float32), 3, ItemSets.empty(3)), "3 sets for 2"),
        (
            lambda index: index.search(np.zeros((1, 8), np.float32), 3, ItemSets.from_lists([[400]])),
            "item row 400",
        ),
    ],
)
def test_bad_input_raises_value_error(kind: str, call, message: str) -> None:  # type: ignore[no-untyped-def]
    index = index_of(kind, unit_rows(np.random.default_rng(8), 400, 8))
    with pytest.raises(ValueError, match=message):
        call(index)
    assert index.n_items == 400  # a rejected add adds nothing


def test_bad_options_raise_value_error() -> None:
    items = unit_rows(np.random.default_rng(9), 400, 8)
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        build_index("annoy", items)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nprobe must be positive, got 0"):
        FaissIndex(items, nprobe=0)
    with pytest.raises(ValueError, match="nlist must be positive, got -1"):
        FaissIndex(items, nlist=-1)


@pytest.mark.parametrize("n_items", [400, 60])  # an IVF, and the exact IndexFlatIP fallback
def test_faiss_updated_replaces_and_appends_without_touching_the_original(n_items: int) -> None:
    rng = np.random.default_rng(11)
    items = unit_rows(rng, n_items, 16)
    index = FaissIndex(items, nlist=8 if n_items >= 312 else None, nprobe=8, threads=1)
    assert (index.fallback_reason is None) == (n_items >= 312)
    changed = unit_rows(rng, 3, 16)
    rows = np.array([5, n_items, n_items + 1])  # one updated item, two new ones
    copy = index.updated(rows, changed)
    assert (copy.n_items, index.n_items) == (n_items + 2, n_items)
    expected = np.concatenate([items, changed[1:]])
    expected[5] = changed[0]
    queries = np.concatenate([changed, unit_rows(rng, 5, 16)])
    # Every list probed: the copy must answer as exact search over the updated vectors does.
    want = ExactIndex(expected).search(queries, 10)
    got = copy.search(queries, 10)
    np.testing.assert_array_equal(got.rows.numpy(), want.rows.numpy())
    np.testing.assert_allclose(got.scores.numpy(), want.scores.numpy(), rtol=1e-5)
    assert got.rows[:3, 0].tolist() == rows.tolist()  # each changed item is its own best match
    # The original still holds the old vectors: row 5 is its old self, the new rows do not exist.
    before = index.search(items[[5]], 1)
    assert before.rows[0, 0].item() == 5 and before.scores[0, 0].item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match=r"new rows must continue from"):
        index.updated(np.array([n_items + 1]), changed[:1])
    with pytest.raises(ValueError, match=r"distinct and non-negative"):
        index.updated(np.array([3, 3]), changed[:2])


def test_auto_picks_faiss_from_the_measured_threshold_and_serving_defaults_to_it() -> None:
    from raymm.serve.settings import ServeConfig

    auto = IndexChoice("auto")
    assert auto.resolve(FAISS_MIN_ITEMS - 1) == "exact" and auto.resolve(FAISS_MIN_ITEMS) == "faiss"
    assert IndexChoice("exact").resolve(10 * FAISS_MIN_ITEMS) == "exact"
    # serve.faiss_min_items repeats the constant in the config schema: the two must not drift.
    assert ServeConfig().faiss_min_items == FAISS_MIN_ITEMS
