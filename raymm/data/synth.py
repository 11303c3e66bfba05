"""The deterministic synthetic multimodal benchmark (``raymm data synth``).

Every item has five latent facets (genre, style, mood, topic, palette; see
:mod:`raymm.data.synth_media`) and a creator whose facets it mostly shares. Each modality shows only
some facets, so a recommender must fuse text, image and audio to see them all. Users like a few
values of a few facets; every facet is some users' main taste, so every modality matters. Each user
picks items without replacement by Gumbel-top-k on ``affinity / temperature + bias * log(popularity)``,
and the event kind follows the affinity (high: play/like/purchase, middle: view/click, low: skip).

Timeline (ms, UTC): warm items exist before ``timeline_start`` (2026-01-01); events fall over
:data:`TIMELINE_DAYS` days. The part before ``stream_from`` splits by fixed times into train,
validation and test (fractions :data:`SPLIT_FRACTIONS`; each event at or after a boundary is in the
later split). Cold items are created between ``validation_from`` and ``stream_from``, never appear in
train/validation/test, and their events before ``stream_from`` form ``cold_start``. Every event from
``stream_from`` on, warm or cold, is in ``stream``. New items draw as much attention as synthetic_items items,
compressed into their shorter life.

Determinism: all randomness comes from ``np.random.SeedSequence([seed, stream, ...])``; synthetic_items and
users are drawn vectorised from their own streams, each item's media from per-item, per-modality
streams, so chunk sizes and missing-modality rates never change other values, and the number of
worker processes (``synth.workers``) changes nothing. Same config and seed give byte-identical
parquet files.
"""

from __future__ import annotations

import datetime as dt
import itertools
import multiprocessing
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymm.console import progress as progress_bar
from raymm.data import io
from raymm.data.dataset import ITEMS, MANIFEST, _iso_ms, write_dataset
from raymm.data.schema import EVENT_KINDS, ITEMS_SCHEMA, MODALITIES, TIMESTAMP
from raymm.data.settings import SynthConfig
from raymm.data.synth_media import (
    CARDINALITIES,
    FACETS,
    GENRE,
    STYLE,
    render_audio,
    render_image,
    render_text,
)
from raymm.errors import ConfigError

# Preset sizes: (items, users, mean events per user).
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (240, 120, 40),
    "small": (3000, 1500, 60),
    "large": (100_000, 50_000, 60),
}
EPOCH_MS = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
DAY_MS = 86_400_000
TIMELINE_DAYS = 120
CATALOGUE_HISTORY_DAYS = 365
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
ITEMS_PER_CREATOR = 20
CREATOR_SHARE = 0.7  # probability that an item takes a facet from its creator
TAG_PROBABILITY = 0.8  # each of genre/style/creator tags is present with this probability
AFFINITY_TEMPERATURE = 0.5
CHUNK_ITEMS = 256  # items rendered (and, for large catalogues, written) at a time

_BLOCK_CELLS = 2_000_000  # user x item scores held at once while sampling
_IN_MEMORY_ITEMS_BYTES = 512 << 20  # above this estimate, items.parquet is written chunk by chunk
_FACET_OFFSETS = np.concatenate([[0], np.cumsum(CARDINALITIES)[:-1]])
_RANK_WEIGHTS = np.array([1.0, 0.5, 0.25, 0.0, 0.0])  # weight of a user's 1st, 2nd, 3rd facet
_SECOND_VALUE_PROBABILITY = 0.3
_HIGH_AFFINITY, _LOW_AFFINITY = 1.5, 0.0  # z-score thresholds of the event kinds
_KIND = {kind: code for code, kind in enumerate(EVENT_KINDS)}

# Independent random streams: SeedSequence([seed, stream, ...]).
_CATALOGUE_STREAM, _USERS_STREAM, _USER_BLOCK_STREAM, _ITEM_STREAM = range(4)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


@dataclass(frozen=True)
class Timeline:
    """Boundaries of the event timeline, in ms since the Unix epoch."""

    start: int
    validation_from: int
    test_from: int
    stream_from: int
    end: int

    @classmethod
    def from_stream_fraction(cls, stream_fraction: float) -> Timeline:
        """Split :data:`TIMELINE_DAYS` days: the last ``stream_fraction`` streams, the rest splits."""
        span = TIMELINE_DAYS * DAY_MS
        offline = int(span * (1.0 - stream_fraction))
        train, validation, _ = SPLIT_FRACTIONS
        return cls(
            start=EPOCH_MS,
            validation_from=EPOCH_MS + int(offline * train),
            test_from=EPOCH_MS + int(offline * (train + validation)),
            stream_from=EPOCH_MS + offline,
            end=EPOCH_MS + span,
        )

    def as_manifest(self) -> dict[str, str]:
        """The boundaries as ISO strings, in the format of :func:`split_by_time`."""
        return {
            "timeline_start": _iso_ms(self.start),
            "validation_from": _iso_ms(self.validation_from),
            "test_from": _iso_ms(self.test_from),
            "stream_from": _iso_ms(self.stream_from),
            "cold_items_from": _iso_ms(self.validation_from),
            "timeline_end": _iso_ms(self.end),
        }


@dataclass(frozen=True)
class SyntheticItems:
    """The latent truth of every item; arrays are indexed by item position (= sorted item_id)."""

    facets: np.ndarray  # (n_items, n_facets) int64 value codes
    n_creators: int
    creator: np.ndarray  # (n_items,)
    log_popularity: np.ndarray  # (n_items,) standard normal
    cold: np.ndarray  # (n_items,) bool
    created_ms: np.ndarray  # (n_items,) int64
    missing: dict[str, np.ndarray]  # modality -> (n_items,) bool
    tagged: np.ndarray  # (n_items, 3) bool: genre, style, creator tag present


@dataclass(frozen=True)
class Events:
    """All sampled interactions, sorted by (ts, user, item)."""

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray  # index into EVENT_KINDS
    ts: np.ndarray  # ms


def resolve_sizes(config: SynthConfig) -> tuple[int, int, int]:
    """(items, users, events per user) of ``config``: its preset, overridden by explicit numbers."""
    n_items, n_users, events_per_user = SIZES[config.size]
    return (
        config.n_items or n_items,
        config.n_users or n_users,
        config.events_per_user or events_per_user,
    )


def synthesize(config: SynthConfig, out: str, seed: int, progress: bool = True) -> dict[str, Any]:
    """Generate the benchmark into dataset directory ``out`` (local path or pyarrow URI).

    ``config.seed``, when set, overrides ``seed``. Returns the manifest written by
    :func:`~raymm.data.dataset.write_dataset`. Same config and seed give byte-identical parquet files.
    Raises :class:`ConfigError` for a negative seed.
    """
    seed = config.seed if config.seed is not None else seed
    if seed < 0:
        raise ConfigError(f"synth seed must be a non-negative integer, got {seed}")
    n_items, n_users, events_per_user = resolve_sizes(config)
    timeline = Timeline.from_stream_fraction(config.stream_fraction)
    synthetic_items = _draw_items(n_items, config, seed, timeline)
    events = _sample_events(synthetic_items, n_users, events_per_user, config, seed, timeline, progress)

    item_ids = _ids("i", n_items)
    tables = _interaction_tables(events, synthetic_items, timeline, item_ids, _ids("u", n_users))
    tables["cold_items"] = pa.table({"item_id": item_ids.filter(pa.array(synthetic_items.cold))})
    tables["facets"] = _facets_table(synthetic_items, item_ids)
    # The generator's truth for the oracle (raymm.eval.oracle): no training input reads it.
    tables["oracle_users"] = _oracle_users_table(n_users, seed)
    manifest = {
        "name": "synthetic",
        "source": "raymm data synth",
        "size": config.size,
        "seed": seed,
        "n_items": n_items,
        "n_users": n_users,
        "events_per_user": events_per_user,
        "synth_config": config.model_dump(mode="json"),
        "facets": {
            facet.name: {
                "values": list(facet.values),
                "cardinality": facet.cardinality,
                "modalities": list(facet.modalities),
            }
            for facet in FACETS
        },
        "creators": synthetic_items.n_creators,
        "oracle": {
            "affinity_temperature": AFFINITY_TEMPERATURE,
            "popularity_bias": config.popularity_bias,
            "facet_offsets": _FACET_OFFSETS.tolist(),
            "tables": ["oracle_users (preferences)", "facets (facet codes, log_popularity)"],
        },
        "tags": ["genre/<value>", "style/<value>", "creator/<id>"],
        "splits": timeline.as_manifest(),
        "missing": {m: int(synthetic_items.missing[m].sum()) for m in MODALITIES},
    }
    chunks = _item_chunks(synthetic_items, item_ids, config, seed, progress)
    per_item = config.image_size**2 * 3 + 4 * config.audio_sample_rate  # raw pixels + 2 s of int16
    if n_items * per_item <= _IN_MEMORY_ITEMS_BYTES:
        return write_dataset(out, pa.concat_tables(list(chunks)).combine_chunks(), tables, manifest)
    return _write_dataset_streaming_items(out, chunks, tables, manifest)


def _ids(prefix: str, count: int) -> pa.Array:
    """``prefix`` + zero-padded ordinal, so string order equals numeric order."""
    width = max(5, len(str(max(count - 1, 0))))
    digits = pc.utf8_lpad(pa.array(np.arange(count, dtype=np.int64)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _draw_items(n_items: int, config: SynthConfig, seed: int, timeline: Timeline) -> SyntheticItems:
    rng = _rng(seed, _CATALOGUE_STREAM)
    n_facets = len(FACETS)
    n_creators = max(1, round(n_items / ITEMS_PER_CREATOR))
    creator_facets = rng.integers(0, CARDINALITIES, size=(n_creators, n_facets))
    creator = rng.integers(0, n_creators, n_items)
    from_creator = rng.random((n_items, n_facets)) < CREATOR_SHARE
    random_facets = rng.integers(0, CARDINALITIES, size=(n_items, n_facets))
    facets = np.where(from_creator, creator_facets[creator], random_facets)
    log_popularity = rng.standard_normal(n_items)
    cold = np.zeros(n_items, dtype=bool)
    cold[rng.choice(n_items, round(config.cold_fraction * n_items), replace=False)] = True
    warm_created = rng.integers(timeline.start - CATALOGUE_HISTORY_DAYS * DAY_MS, timeline.start, n_items)
    cold_created = rng.integers(timeline.validation_from, timeline.stream_from, n_items)
    missing: dict[str, np.ndarray] = {m: rng.random(n_items) < getattr(config.missing, m) for m in MODALITIES}
    return SyntheticItems(
        facets=facets,
        n_creators=n_creators,
        creator=creator,
        log_popularity=log_popularity,
        cold=cold,
        created_ms=np.where(cold, cold_created, warm_created),
        missing=missing,
        tagged=rng.random((n_items, 3)) < TAG_PROBABILITY,
    )


def _user_preferences(n_users: int, rng: np.random.Generator) -> np.ndarray:
    """(n_users, sum of cardinalities) weights: each user likes 1-2 values of 1-3 facets.

    The main facet is uniform over all five, so mood, palette and topic (each seen by one modality
    only) are the main taste of 3/5 of the users.
    """
    n_facets = len(FACETS)
    facet_by_rank = np.argsort(rng.random((n_users, n_facets)), axis=1)
    n_cared = rng.integers(1, 4, n_users)
    rank_weight = np.where(np.arange(n_facets) < n_cared[:, None], _RANK_WEIGHTS[:n_facets], 0.0)
    facet_weight = np.zeros((n_users, n_facets))
    np.put_along_axis(facet_weight, facet_by_rank, rank_weight, axis=1)
    liked = _FACET_OFFSETS + rng.integers(0, CARDINALITIES, size=(n_users, n_facets))
    also_liked = _FACET_OFFSETS + rng.integers(0, CARDINALITIES, size=(n_users, n_facets))
    has_second = rng.random((n_users, n_facets)) < _SECOND_VALUE_PROBABILITY
    rows = np.arange(n_users)[:, None]
    weights = np.zeros((n_users, int(CARDINALITIES.sum())), dtype=np.float32)
    weights[rows, liked] = facet_weight
    weights[rows, also_liked] = np.where(has_second, facet_weight, weights[rows, also_liked])
    return weights


def _event_kinds(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Event kind codes from affinity z-scores: high -> play/like/purchase, middle -> view/click, low -> skip."""
    score = z + rng.normal(0.0, 0.5, len(z))
    positive = rng.choice([_KIND["play"], _KIND["like"], _KIND["purchase"]], len(z), p=[0.5, 0.35, 0.15])
    neutral = rng.choice([_KIND["view"], _KIND["click"]], len(z), p=[0.55, 0.45])
    return np.select([score >= _HIGH_AFFINITY, score >= _LOW_AFFINITY], [positive, neutral], _KIND["skip"])


def _sample_events(
    synthetic_items: SyntheticItems,
    n_users: int,
    events_per_user: int,
    config: SynthConfig,
    seed: int,
    timeline: Timeline,
    progress: bool,
) -> Events:
    """Each user's items (Gumbel-top-k without replacement), event kinds and times, for blocks of users.

    Every user scores the whole catalog, so this costs users x items; the blocks are shared out
    among ``synth.workers`` processes, each block drawing from its own random stream, so the
    events do not depend on the number of workers.
    """
    n_items = len(synthetic_items.creator)
    rng = _rng(seed, _USERS_STREAM)
    preferences = _user_preferences(n_users, rng)
    spread = rng.lognormal(-0.08, 0.4, n_users)  # mean ~1: users differ in activity
    counts = np.clip(np.round(events_per_user * spread), 1, n_items).astype(np.int64)
    catalog = (
        synthetic_items.facets + _FACET_OFFSETS,  # (n_items, n_facets) columns of `preferences`
        config.popularity_bias * synthetic_items.log_popularity,
        np.where(synthetic_items.cold, synthetic_items.created_ms, timeline.start),  # available from
        timeline.end,
    )
    block = max(1, _BLOCK_CELLS // max(n_items, 1))
    starts = list(range(0, n_users, block))
    indexed = list(enumerate(starts))
    # Tasks of several blocks, so the catalog's arrays travel to a worker a few dozen times at most.
    per_task = max(1, -(-len(starts) // 32))
    tasks = [
        (
            indexed[first : first + per_task],
            preferences[starts[first] : min(starts[first] + per_task * block, n_users)],
            counts[starts[first] : min(starts[first] + per_task * block, n_users)],
            block,
            seed,
            catalog,
        )
        for first in range(0, len(starts), per_task)
    ]
    results = _ordered_results(_sample_blocks, tasks, _workers(config))
    parts = [
        part
        for task_parts in progress_bar(
            results, desc="synth users", unit="task", enabled=progress, total=len(tasks)
        )
        for part in task_parts
    ]
    user, item, kind, ts = (np.concatenate(column) for column in zip(*parts, strict=True))
    order = np.lexsort((item, user, ts))
    return Events(user=user[order], item=item[order], kind=kind[order], ts=ts[order])


def _sample_blocks(
    blocks: list[tuple[int, int]],
    preferences: np.ndarray,
    counts: np.ndarray,
    block: int,
    seed: int,
    catalog: tuple[np.ndarray, np.ndarray, np.ndarray, int],
) -> list[tuple[np.ndarray, ...]]:
    """(user, item, kind, ts) of the user blocks ``(index, first user)``; ``preferences`` and
    ``counts`` hold the rows of these blocks' users, the first block's first user first."""
    codes, popularity, available_from, end_ms = catalog
    offset = blocks[0][1]
    parts: list[tuple[np.ndarray, ...]] = []
    for index, start in blocks:
        block_rng = _rng(seed, _USER_BLOCK_STREAM, index)
        rows = np.arange(start - offset, min(start - offset + block, len(counts)))
        users = rows + offset
        affinity = preferences[rows][:, codes].sum(axis=2, dtype=np.float64)  # (users, items)
        scores = affinity / AFFINITY_TEMPERATURE + popularity + block_rng.gumbel(size=affinity.shape)
        k = counts[rows]
        k_max = int(k.max())
        top = np.argpartition(-scores, k_max - 1, axis=1)[:, :k_max]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(k_max) < k[:, None]
        z = (np.take_along_axis(affinity, top, axis=1) - affinity.mean(axis=1, keepdims=True)) / np.maximum(
            affinity.std(axis=1, keepdims=True), 1e-6
        )
        user = np.broadcast_to(users[:, None], top.shape)[keep]
        item = top[keep]
        kind = _event_kinds(z[keep], block_rng)
        start_ms = available_from[item]
        ts = start_ms + (block_rng.random(len(item)) * (end_ms - start_ms)).astype(np.int64)
        parts.append((user, item, kind, ts))
    return parts


def _interaction_tables(
    events: Events,
    synthetic_items: SyntheticItems,
    timeline: Timeline,
    item_ids: pa.Array,
    user_ids: pa.Array,
) -> dict[str, pa.Table]:
    """Route every event to exactly one of train/validation/test/cold_start/stream, keeping time order."""
    cold = synthetic_items.cold[events.item]
    streamed = events.ts >= timeline.stream_from
    masks = {
        "train": ~cold & (events.ts < timeline.validation_from),
        "validation": ~cold & (events.ts >= timeline.validation_from) & (events.ts < timeline.test_from),
        "test": ~cold & (events.ts >= timeline.test_from) & ~streamed,
        "cold_start": cold & ~streamed,
        "stream": streamed,
    }
    event_ids = _ids("e", len(events.ts))
    kinds = pa.array(EVENT_KINDS)
    tables = {}
    for name, mask in masks.items():
        rows = np.flatnonzero(mask)
        tables[name] = pa.table(
            {
                "user_id": user_ids.take(events.user[rows]),
                "item_id": item_ids.take(events.item[rows]),
                "event": kinds.take(events.kind[rows]),
                "ts": pa.array(events.ts[rows], TIMESTAMP),
                "event_id": event_ids.take(rows),
            }
        )
    return tables


def _facets_table(synthetic_items: SyntheticItems, item_ids: pa.Array) -> pa.Table:
    columns: dict[str, pa.Array] = {"item_id": item_ids}
    for position, facet in enumerate(FACETS):
        columns[facet.name] = pa.array(synthetic_items.facets[:, position].astype(np.int32))
    columns["creator"] = pa.array(synthetic_items.creator.astype(np.int32))
    columns["log_popularity"] = pa.array(synthetic_items.log_popularity.astype(np.float32))
    return pa.table(columns)


def _oracle_users_table(n_users: int, seed: int) -> pa.Table:
    """Each user's facet-value preference weights, as :func:`_sample_events` draws them (the first
    draw of the users' stream), for the oracle that ranks by the generator's true affinity."""
    preferences = _user_preferences(n_users, _rng(seed, _USERS_STREAM))
    width = preferences.shape[1]
    return pa.table(
        {
            "user_id": _ids("u", n_users),
            "preferences": pa.FixedSizeListArray.from_arrays(pa.array(preferences.reshape(-1)), width),
        }
    )


def _tags(synthetic_items: SyntheticItems) -> pa.Array:
    """list<string> per item of its present genre/style/creator tags; null when it has none."""
    genre = np.array([f"genre/{v}" for v in FACETS[GENRE].values], dtype=object)
    style = np.array([f"style/{v}" for v in FACETS[STYLE].values], dtype=object)
    creator = np.array(_ids("creator/c", synthetic_items.n_creators).to_pylist(), dtype=object)
    candidates = np.stack(
        [
            genre[synthetic_items.facets[:, GENRE]],
            style[synthetic_items.facets[:, STYLE]],
            creator[synthetic_items.creator],
        ],
        axis=1,
    )
    per_item = synthetic_items.tagged.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(per_item)]).astype(np.int32)
    values = pa.array(candidates[synthetic_items.tagged], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(per_item == 0))


def _item_chunks(
    synthetic_items: SyntheticItems, item_ids: pa.Array, config: SynthConfig, seed: int, progress: bool
) -> Iterator[pa.Table]:
    """Items tables of :data:`CHUNK_ITEMS` rows each, in item order, conforming to ITEMS_SCHEMA.

    The media are rendered in ``synth.workers`` processes, a chunk per task, and come back in
    item order; each item's media come from its own random streams, so the bytes do not depend
    on the number of workers.
    """
    tags = _tags(synthetic_items)
    n_items = len(synthetic_items.creator)
    bounds = [(start, min(start + CHUNK_ITEMS, n_items)) for start in range(0, n_items, CHUNK_ITEMS)]
    tasks = [
        (
            synthetic_items.facets[start:stop],
            {m: synthetic_items.missing[m][start:stop] for m in MODALITIES},
            start,
            seed,
            (config.noise, config.image_size, config.audio_sample_rate),
        )
        for start, stop in bounds
    ]
    rendered = _ordered_results(_render_chunk, tasks, _workers(config))
    for (start, stop), media in zip(
        bounds,
        progress_bar(rendered, desc="synth items", unit="chunk", enabled=progress, total=len(bounds)),
        strict=True,
    ):
        yield pa.table(
            {
                "item_id": item_ids[start:stop],
                **media,
                "tags": tags[start:stop],
                "created_at": pa.array(synthetic_items.created_ms[start:stop], TIMESTAMP),
            },
            schema=ITEMS_SCHEMA,
        )


def _render_chunk(
    facets: np.ndarray,
    missing: dict[str, np.ndarray],
    start: int,
    seed: int,
    settings: tuple[float, int, int],
) -> dict[str, list[str | bytes | None]]:
    """Text, image and audio of the items ``start, start + 1, ...`` (rows of ``facets``); None where missing."""
    noise, image_size, sample_rate = settings
    renderers: dict[str, Callable[[np.ndarray, np.random.Generator], str | bytes]] = {
        "text": lambda item_facets, rng: render_text(item_facets, rng, noise),
        "image": lambda item_facets, rng: render_image(item_facets, rng, noise, image_size),
        "audio": lambda item_facets, rng: render_audio(item_facets, rng, noise, sample_rate),
    }
    return {
        modality: [
            None
            if missing[modality][row]
            else render(facets[row], _rng(seed, _ITEM_STREAM, start + row, MODALITIES.index(modality)))
            for row in range(len(facets))
        ]
        for modality, render in renderers.items()
    }


def _workers(config: SynthConfig) -> int:
    return config.workers or len(os.sched_getaffinity(0))


def _ordered_results(
    function: Callable[..., Any], tasks: list[tuple[Any, ...]], workers: int
) -> Iterator[Any]:
    """``function(*task)`` for each task, in order: in this process when one worker or one task
    would do, else in ``workers`` spawned processes with at most two tasks per worker in flight
    (so results wait in memory only that long)."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        yield from (function(*task) for task in tasks)
        return
    # spawn, not fork: the parent may hold Arrow and torch thread pools that a fork would copy mid-flight.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        queue = iter(tasks)
        pending = deque(pool.submit(function, *task) for task in itertools.islice(queue, 2 * workers))
        while pending:
            result = pending.popleft().result()
            task = next(queue, None)
            if task is not None:
                pending.append(pool.submit(function, *task))
            yield result


def _write_dataset_streaming_items(
    out: str, chunks: Iterator[pa.Table], tables: dict[str, pa.Table], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write a dataset whose items do not fit in memory: items.parquet one row group per chunk.

    The items go to a temporary file first; :func:`write_dataset` then writes everything else (with
    an empty items table), the temporary file replaces that empty one, and the manifest's item
    count is corrected.
    """
    io.makedirs(out)
    filesystem, path = io.resolve(io.join(out, ITEMS))
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    n_items = 0
    with pq.ParquetWriter(tmp, ITEMS_SCHEMA, filesystem=filesystem, compression="zstd") as writer:
        for chunk in chunks:
            writer.write_table(chunk)
            n_items += chunk.num_rows
    document = write_dataset(out, ITEMS_SCHEMA.empty_table(), tables, manifest)
    filesystem.move(tmp, path)
    document["counts"]["items"] = n_items
    io.write_json(document, io.join(out, MANIFEST))
    return document
