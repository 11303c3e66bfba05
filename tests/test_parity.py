"""Offline equals online (design.md, invariant 7): one event log, two implementations of the
user-state spec, one answer.

The log goes through the stream's state (:class:`~raymm.stream.state.UserStateStore`, fed as the
owner partitions deliver it: forwarded events arrive after later events of their user, one batch
is delivered twice) and through the offline windows (:func:`~raymm.recommend.history.eval_users`
on the same table). Both must give each user the same history (item ids, oldest first, the last
``max_history`` counting events), the same seen set and, through a written and loaded model
artifact, the same user vector: serving's (``Recommender.known`` -> ``history_rows`` -> the
two-tower scorer's pooling over the artifact's item vectors) and evaluation's (``eval_users``
rows -> :class:`~raymm.recommend.scorers.TwoTowerScorer` over the catalog's encoding).

The log exercises: several users, non-counting events (``view``, ``skip``), more counting events
than ``max_history``, an item the catalog lacks (``ghost``), events arriving out of time order
(forwarded, and one produced late with an old timestamp), equal timestamps, an event older than
a full window, and an event sent twice (same ``event_id``).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymm.models.blend_parts import CollabVectors
from raymm.models.towers import TwoTower
from raymm.recommend.blend import BlendSettings, served_retriever
from raymm.recommend.catalog import Catalog, build_catalog
from raymm.recommend.collab import CollaborativeScorer, PersonalScorer, map_content
from raymm.recommend.content import EncodedItems
from raymm.recommend.history import EvalUsers, eval_users
from raymm.recommend.index import IndexChoice
from raymm.recommend.recommender import Recommender, load_model
from raymm.recommend.scorers import ContentScorer, FitContext, PopularityScorer, TwoTowerScorer
from raymm.recommend.vectors import encode_catalog
from raymm.stream.events import Event
from raymm.stream.state import StateSpec, UserRecord, UserStateStore
from tests.fixtures import small_model_config

EPOCH_MS = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
MAX_HISTORY = 4
COUNTING = ("click", "like", "purchase", "play")  # view and skip do not count
BLEND = BlendSettings(
    collab_weight=0.5,
    collab_relative=1.0,
    collab_decay=0.8,  # the item-item part weighs the window by recency, online as offline
    shrinkage=2.0,
    popularity_weight=0.3,
    content_weight=0.4,
    content_relative=1.0,
)
#: The content part's width: below the features' 14, so the live path projects as training did.
CONTENT_DIM = 5
N_ITEMS = 10
USERS = ("ana", "bo", "cy", "dee")

#: (event_id, user, item, event, ts in seconds), in the order producers sent them (table order).
LOG: list[tuple[str, str, str, str, int]] = [
    ("a1", "ana", "i1", "click", 10),
    ("b1", "bo", "i2", "like", 11),
    ("a2", "ana", "i2", "view", 12),
    ("a3", "ana", "i3", "like", 13),
    ("c1", "cy", "i4", "view", 14),
    ("a4", "ana", "i4", "purchase", 15),
    ("d1", "dee", "i1", "click", 16),
    ("a5", "ana", "ghost", "click", 17),  # not in the catalog: holds its place in the window
    ("b2", "bo", "i5", "click", 20),  # b2, b3: equal times, kept in table / arrival order
    ("b3", "bo", "i6", "purchase", 20),
    ("a6", "ana", "i5", "skip", 18),
    ("a7", "ana", "i6", "click", 19),
    ("d2", "dee", "i2", "like", 21),
    ("a8", "ana", "i7", "like", 24),
    ("d3", "dee", "i3", "click", 23),
    ("a8", "ana", "i7", "like", 24),  # a producer retry: the same event again
    ("c2", "cy", "i5", "skip", 22),
    ("d4", "dee", "i4", "purchase", 25),
    ("d5", "dee", "ghost", "like", 26),  # the newest of dee's: an unknown item
    ("d0", "dee", "i8", "click", 5),  # produced late, older than dee's whole full window: seen only
    ("a0", "ana", "i8", "like", 16),  # produced late, lands in the middle of ana's window
    ("b4", "bo", "i7", "view", 27),
]
#: Events that reached their user's owner partition through a forwarder: they arrive this many
#: messages after the position they were produced at, behind later events of their user.
FORWARDED = {"a1": 6, "a4": 3, "b1": 9, "d2": 4, "a5": 2}

#: The spec by hand: the newest MAX_HISTORY counting events by time, oldest first, unknown
#: items included (the state knows no catalog); seen: every item with any event.
EXPECTED_HISTORY = {
    "ana": ["i8", "ghost", "i6", "i7"],
    "bo": ["i2", "i5", "i6"],
    "cy": [],
    "dee": ["i2", "i3", "i4", "ghost"],
}
EXPECTED_SEEN = {
    "ana": {"i1", "i2", "i3", "i4", "ghost", "i5", "i6", "i7", "i8"},
    "bo": {"i2", "i5", "i6", "i7"},
    "cy": {"i4", "i5"},
    "dee": {"i1", "i2", "i3", "i4", "ghost", "i8"},
}


def _event(row: tuple[str, str, str, str, int]) -> Event:
    event_id, user, item, kind, seconds = row
    return Event(event_id, user, item, kind, EPOCH_MS + seconds * 1000)


def _table(rows: list[tuple[str, str, str, str, int]]) -> pa.Table:
    return pa.table(
        {
            "user_id": [r[1] for r in rows],
            "item_id": [r[2] for r in rows],
            "event": [r[3] for r in rows],
            "ts": pa.array([EPOCH_MS + r[4] * 1000 for r in rows], pa.timestamp("ms", tz="UTC")),
            "event_id": [r[0] for r in rows],
        }
    )


def _arrival(log: list[tuple[str, str, str, str, int]]) -> list[tuple[str, str, str, str, int]]:
    """The log as the owner partitions deliver it: forwarded events later than produced."""
    delay = [FORWARDED.get(row[0], 0) for row in log]
    order = sorted(range(len(log)), key=lambda k: (k + delay[k], delay[k] > 0))
    return [log[k] for k in order]


def _owner(user: str) -> int:
    return USERS.index(user) % 2


def _online(
    arrival: list[tuple[str, str, str, str, int]], spec: StateSpec, max_users_in_memory: int | None = None
) -> UserStateStore:
    """A store fed ``arrival`` per owner partition, in two polls, the first delivered twice."""
    store = UserStateStore(spec, max_users_in_memory=max_users_in_memory)
    for partition in (0, 1):
        store.add_partition(partition)
        messages = [
            (offset, _event(row))
            for offset, row in enumerate(r for r in arrival if _owner(r[1]) == partition)
        ]
        half = len(messages) // 2
        for batch in (messages[:half], messages[:half], messages[half:]):  # at-least-once delivery
            store.apply_batch(partition, batch)
    return store


@dataclass
class Model:
    directory: Path
    catalog: Catalog
    recommender: Recommender


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """A seeded two-tower artifact over random features of items i0..i9, written and loaded as
    training and serving do (training would change the weights, not the code paths compared).
    Attention pooling, so that the user vector depends on the history's order."""
    from raymm.models.artifact import write_artifact

    directory = tmp_path_factory.mktemp("parity") / "model"
    config = small_model_config(
        directory.parent,
        f"model.user_state.max_history={MAX_HISTORY}",
        f"model.user_state.events=[{','.join(COUNTING)}]",
        "model.user_state.pooling=attention",
        "rank.negative_events=[skip,view]",  # every event kind is a positive or a negative
    )
    item_ids = [f"i{k}" for k in range(N_ITEMS)]
    rng = np.random.default_rng(0)
    features = pa.table({"item_id": item_ids})
    for modality, width in (("text", 8), ("image", 6)):
        values = pa.array(rng.normal(size=N_ITEMS * width).astype(np.float32))
        features = features.append_column(modality, pa.FixedSizeListArray.from_arrays(values, width))
    # Trained on the whole log: the event on an item outside the catalog gets no id embedding.
    catalog = build_catalog(features, pa.table({"item_id": item_ids}), _table(LOG))
    torch.manual_seed(0)
    two_tower = TwoTower(config.model, catalog.dims).eval()
    two_tower.fit_alignment(catalog.features, catalog.present)
    vectors = encode_catalog(two_tower, catalog).vectors
    # The served blend with every part on: item-item (fitted on the log, content for the rest),
    # content similarity (projected), popularity with a shrinkage and a floor.
    context = FitContext(catalog, _table(LOG), COUNTING)
    collab = CollaborativeScorer(l2=1.0).fit(context).fill_from_content(vectors)
    content = ContentScorer(dim=CONTENT_DIM).fit(context)
    assert collab.map is not None
    write_artifact(
        directory,
        two_tower,
        catalog.item_ids,
        vectors.numpy(),
        config=config.model_dump(mode="json", by_alias=True),
        metrics=BLEND.to_metrics(),
        data_fingerprint="parity-test",
        popularity=np.arange(N_ITEMS, dtype=np.float64),
        collab=CollabVectors(collab.query_vectors(), collab.item_vectors(), collab.map),
        content=content.vectors(),
    )
    return Model(directory, catalog, load_model(directory))


def _offline(model: Model) -> EvalUsers:
    """Evaluation's users: history and seen from the whole log, one held-out click each."""
    held_out = _table([(f"t-{user}", user, "i9", "click", 100) for user in USERS])
    spec = model.recommender.spec
    return eval_users(_table(LOG), held_out, model.catalog, spec.events, spec.max_history)


def test_the_stream_and_the_offline_windows_give_the_same_users(model: Model) -> None:
    spec = StateSpec.from_artifact(model.directory)  # what a serving shard reads
    assert (spec.max_history, spec.events) == (MAX_HISTORY, frozenset(COUNTING))
    arrival = _arrival(LOG)
    ana_times = [row[4] for row in arrival if row[1] == "ana"]
    assert ana_times != sorted(ana_times)  # events reach the state out of time order
    store = _online(arrival, spec)
    offline = _offline(model)
    assert offline.user_ids.tolist() == list(USERS)
    recommender = model.recommender
    ids = model.catalog.item_ids
    assert recommender.item_ids.tolist() == ids.tolist()  # so rows compare as rows

    for u, user in enumerate(USERS):
        state = store.get(user)
        assert state is not None
        # The state is the spec by hand, unknown items included; the duplicate counted once.
        assert list(state.history) == EXPECTED_HISTORY[user], user
        assert set(state.seen) == EXPECTED_SEEN[user], user
        assert state.n_events == sum(1 for e in {r[0]: r for r in LOG}.values() if e[1] == user)
        # Serving's window (the items its model knows) is evaluation's, entry for entry.
        offline_history = [str(ids[r]) for r in offline.history[u] if r >= 0]
        assert recommender.known(state.history) == offline_history, user
        served = recommender.history_rows(recommender.known(state.history))[0]
        np.testing.assert_array_equal(served, offline.history[u])  # padding included
        offline_seen = {str(ids[r]) for r in offline.seen.take(np.array([u])).indices.tolist()}
        assert set(recommender.known(state.seen)) == offline_seen, user

    # The same user vectors: serving pools the artifact's item vectors over its rows, evaluation
    # the catalog's encoding over its own.
    states = [store.get(user) for user in USERS]
    rows = np.concatenate([recommender.history_rows(recommender.known(s.history)) for s in states if s])
    online_vectors = recommender.two_tower.user_vectors(rows)
    offline_vectors = TwoTowerScorer(recommender.artifact.model, model.catalog).user_vectors(offline.history)
    torch.testing.assert_close(online_vectors, offline_vectors, rtol=0, atol=1e-5)
    # The whole served retriever too: two-tower, item-item, content and popularity parts of the
    # user vector; the content part as evaluation fits it from the catalog's features.
    saved = recommender.artifact.collab_vectors()
    assert saved is not None and recommender.settings == BLEND
    assert recommender.content is not None and recommender.content.width == CONTENT_DIM
    offline_retriever = served_retriever(
        TwoTowerScorer(recommender.artifact.model, model.catalog),
        CollaborativeScorer(query_vectors=saved.query, item_vectors=saved.items),
        PopularityScorer(np.arange(N_ITEMS)),
        BLEND,
        ContentScorer(dim=CONTENT_DIM).fit(FitContext(model.catalog, _table(LOG), COUNTING)),
    )
    assert recommender.retriever.user_vectors(rows).shape[1] == 32 + saved.query.shape[1] + CONTENT_DIM + 1
    torch.testing.assert_close(
        recommender.retriever.user_vectors(rows),
        offline_retriever.user_vectors(offline.history),
        rtol=0,
        atol=1e-5,
    )
    primary = recommender.retriever.primary
    assert isinstance(primary, PersonalScorer) and primary.collaborative is not None
    assert primary.collaborative.decay == 0.8
    # ... and they tell the users apart (a wrong window could not pass by accident).
    assert (
        torch.cdist(offline_vectors, offline_vectors)[~torch.eye(len(USERS), dtype=torch.bool)].min() > 1e-3
    )


def _folded(store: UserStateStore) -> dict[str, tuple[object, ...]]:
    """What a user's state is, less ``recent_ids`` (the dedupe's memory of arrivals, by nature
    in arrival order)."""
    return {
        user: (record.history, record.history_ts, record.seen, record.n_events, record.last_ts_ms)
        for _, (_, users) in store.export().items()
        for user, record in users.items()
    }


def test_the_live_state_is_a_fold_of_the_set_of_events_whatever_their_order(model: Model) -> None:
    spec = StateSpec.from_artifact(model.directory)
    reference = _folded(_online(LOG, spec))
    rng = random.Random(0)
    for _ in range(20):
        arrival = list(LOG)
        rng.shuffle(arrival)
        # Equal times stay in table order: that order is all that breaks their tie, online and offline.
        tied = [k for k, row in enumerate(arrival) if row[0] in ("b2", "b3")]
        for k, row in zip(tied, [r for r in LOG if r[0] in ("b2", "b3")], strict=True):
            arrival[k] = row
        assert _folded(_online(arrival, spec)) == reference
    # Users moved to the spill file and back (their JSON form) keep the same state.
    forwarded = _online(_arrival(LOG), spec)
    assert _folded(forwarded) == reference
    assert _online(_arrival(LOG), spec, max_users_in_memory=1).export() == forwarded.export()


def test_a_record_round_trips_through_json_with_its_times() -> None:
    spec = StateSpec(max_history=3, events=frozenset(COUNTING))
    record = UserRecord()
    for row in _arrival(LOG):
        if row[1] == "ana":
            record.apply(_event(row), spec)
    assert record.history == ["i8", "ghost", "i6", "i7"][-3:]
    assert record.history_ts == sorted(record.history_ts)
    assert UserRecord.from_json(record.to_json()) == record
    # A record kept without its times (an older snapshot): the entries count as the oldest.
    legacy = UserRecord(history=["x", "y"])
    legacy.apply(_event(("late", "ana", "z", "click", 1)), spec)
    assert legacy.history == ["x", "y", "z"]


def test_a_repeat_is_recognised_online_while_it_is_among_the_users_last_dedupe_window_ids() -> None:
    # The documented limit of the parity: offline drops every repeat of a user's event id, the
    # stream only those it still remembers (bounded memory per user).
    spec = StateSpec(max_history=5, events=frozenset(COUNTING), dedupe_window=2)
    rows = [("r1", "u", "i1", "click", 1), ("r2", "u", "i2", "click", 2), ("r1", "u", "i1", "click", 1)]
    near, far = UserRecord(), UserRecord()
    for row in rows:
        near.apply(_event(row), spec)
    for row in [*rows[:2], ("r3", "u", "i3", "click", 3), rows[2]]:
        far.apply(_event(row), spec)
    assert near.history == ["i1", "i2"]  # as offline
    assert far.history == ["i1", "i1", "i2", "i3"]  # r1 was forgotten: applied twice


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_a_live_item_gets_its_item_item_and_content_vectors_as_training_gave_catalog_items(
    model: Model, kind: str
) -> None:
    base = Recommender(
        model.recommender.artifact,
        None,
        50,
        index=IndexChoice(kind=kind, nprobe=64),  # type: ignore[arg-type]
    )
    saved = base.collab_vectors
    assert saved is not None
    like = 3  # the new item's content is item 3's
    vector = base.two_tower.item_vectors()[like : like + 1].numpy()
    modalities = base.artifact.model.modalities
    live = base.with_items(
        EncodedItems(
            ["new"],
            vector,
            {m: np.zeros((1, 32), np.float32) for m in modalities},
            {m: np.ones(1, dtype=bool) for m in modalities},
            features={m: model.catalog.features[m][like : like + 1].numpy() for m in modalities},
        )
    )
    # Its content row is computed from its raw features with the catalog's statistics and
    # projection: item 3's row, which training computed from the same features.
    assert base.content is not None and live.content is not None
    torch.testing.assert_close(live.content.item_vectors()[-1], base.content.item_vectors()[like])
    torch.testing.assert_close(live.content.item_vectors()[:N_ITEMS], base.content.item_vectors())
    assert live.collab_vectors is not None and len(live.item_ids) == N_ITEMS + 1
    query, items = map_content(torch.from_numpy(vector), saved.content_map)
    torch.testing.assert_close(live.collab_vectors.items[-1], items[0])
    torch.testing.assert_close(live.collab_vectors.query[-1], query[0])
    torch.testing.assert_close(live.collab_vectors.items[:N_ITEMS], saved.items)  # the others unchanged
    # It is recommendable at once, and a history holding it moves the item-item part.
    answer = live.recommend(["i1", "i2"], k=N_ITEMS + 1)
    assert "new" in [r.item_id for r in answer]
    with_new = live.retriever.user_vectors(live.history_rows(["i1", "new"]))
    without = live.retriever.user_vectors(live.history_rows(["i1"]))
    assert not torch.allclose(with_new, without)


def test_an_artifact_whose_blend_needs_the_item_item_or_content_part_refuses_to_load_without_it(
    model: Model, tmp_path: Path
) -> None:
    import shutil

    from raymm.models.blend_parts import COLLAB, CONTENT
    from raymm.models.errors import ModelLoadError

    copy = tmp_path / "model"
    shutil.copytree(model.directory, copy)
    (copy / COLLAB).unlink()
    with pytest.raises(ModelLoadError, match=f"weighs the item-item part .* no {COLLAB}"):
        load_model(copy)
    shutil.copy(model.directory / COLLAB, copy / COLLAB)
    (copy / CONTENT).unlink()
    with pytest.raises(ModelLoadError, match=f"weighs the content part .* no {CONTENT}"):
        load_model(copy)
    manifest = model.recommender.artifact.manifest.metrics
    assert BlendSettings.chosen(manifest) == BLEND.label()  # no trials recorded: no score shown
    assert BlendSettings.chosen({}) == "none recorded"


def test_an_artifact_whose_recorded_blend_is_not_servable_refuses_to_load_naming_it(
    model: Model, tmp_path: Path
) -> None:
    """A hand-edited manifest (a decay of 1.5, an unknown blend key) is a clear load error that
    names the manifest's blend, and the artifact on disk is left as it was."""
    import json
    import shutil

    from raymm.models.errors import ModelLoadError

    for edit, reason in (({"collab_decay": 1.5}, "decay must be in"), ({"spice": 1}, "spice")):
        copy = tmp_path / f"model-{reason.split()[0]}"
        shutil.copytree(model.directory, copy)
        document = json.loads((copy / "manifest.json").read_text())
        document["metrics"]["blend"].update(edit)
        written = json.dumps(document)
        (copy / "manifest.json").write_text(written)
        with pytest.raises(ModelLoadError, match=f"metrics.blend is not a blend raymm can serve: .*{reason}"):
            load_model(copy)
        assert (copy / "manifest.json").read_text() == written
