"""A raymm dataset directory: the files every stage reads, and the manifest that lists them.

Layout (a local path or any pyarrow filesystem URI)::

    dataset.json          manifest: name, source, counts, split boundaries, files present
    items.parquet         every item, cold-start ones included (ITEMS_SCHEMA)
    train.parquet         interactions split by time (INTERACTIONS_SCHEMA) ...
    validation.parquet
    test.parquet          ... on warm items only
    cold_items.parquet    optional: item_id of items held out of training entirely
    cold_start.parquet    optional: interactions on cold items after the training period
    stream.parquet        optional: later events, time-ordered, for the live (Kafka) path
    facets.parquet        optional: ground-truth latent facets (synthetic data only)
    features.parquet      optional: precomputed features in the features contract
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymm import __version__
from raymm.data import io
from raymm.data.schema import POSITIVE_EVENTS, conform_interactions, conform_items
from raymm.errors import DataError

MANIFEST = "dataset.json"
ITEMS = "items.parquet"
FEATURES = "features.parquet"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
INTERACTION_FILES: tuple[str, ...] = (*SPLITS, "cold_start", "stream")
OPTIONAL_TABLES: tuple[str, ...] = (
    "cold_items",
    "cold_start",
    "stream",
    "facets",
    "features",
    "oracle_users",
)
FORMAT_VERSION = 1


@dataclass
class Dataset:
    """Tables of one dataset; ``tables`` maps a file stem (``train``, ``stream``...) to its table."""

    items: pa.Table
    tables: dict[str, pa.Table]
    manifest: dict[str, Any] = field(default_factory=dict)

    def interactions(self, split: str) -> pa.Table:
        """The interactions of ``split`` (train, validation, test, cold_start or stream)."""
        if split not in self.tables:
            raise DataError(f"dataset has no {split!r} table; it has {sorted(self.tables)}")
        return self.tables[split]


def split_by_time(
    interactions: pa.Table, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[dict[str, pa.Table], dict[str, str]]:
    """Split interactions globally by timestamp into train/validation/test.

    Boundaries are the timestamp quantiles of ``fractions`` (which must sum to 1); every event at or
    after a boundary falls in the later split, so no future event leaks into training. Returns the
    three tables sorted by ``ts`` and the two boundaries as ISO strings.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    table = interactions.sort_by([("ts", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")])
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    n = len(ts)
    if n == 0:
        empty = {name: table for name in SPLITS}
        return empty, {"validation_from": "", "test_from": ""}
    cut_val = round(n * fractions[0])
    cut_test = round(n * (fractions[0] + fractions[1]))
    # Move each cut forward past equal timestamps so one instant never straddles two splits.
    bounds = [
        0 if cut <= 0 else n if cut >= n else int(np.searchsorted(ts, ts[cut - 1], side="right"))
        for cut in (cut_val, cut_test)
    ]
    start_test = bounds[1]
    parts = {
        "train": table.slice(0, bounds[0]),
        "validation": table.slice(bounds[0], start_test - bounds[0]),
        "test": table.slice(start_test),
    }
    iso = {
        "validation_from": _iso_ms(int(ts[bounds[0]])) if bounds[0] < n else "",
        "test_from": _iso_ms(int(ts[start_test])) if start_test < n else "",
    }
    return parts, iso


def held_out_users(
    splits: dict[str, pa.Table], events: Sequence[str] = POSITIVE_EVENTS
) -> dict[str, dict[str, int]]:
    """Per held-out split (validation, test): the users evaluation scores, and how many meet the model
    with an empty history.

    Counts as :func:`raymm.eval.evaluate.eval_setup` builds its users (with every item in the
    catalog, as after an import): a split's users are those with an ``events`` event (the counting
    events, ``model.user_state.events``) on an item they had no event on before it, and their
    history is every counting event before the split: train for validation, train and validation
    for test. Returns ``{split: {"users": n, "without_history": m, "without_train": k}}``: ``m`` of
    the ``n`` users have no counting event before the split (an empty history), ``k`` have no train
    event at all (for test ``k`` is usually the larger: validation events are history too).
    ``splits`` holds at least train, validation and test interactions.
    """
    counted = pa.array(list(events), pa.string())
    train_users = pc.unique(splits["train"].column("user_id").combine_chunks())
    counts: dict[str, dict[str, int]] = {}
    for position, split in enumerate(SPLITS[1:], start=1):
        held = splits[split]
        positives = _user_item(held.filter(pc.is_in(held.column("event"), value_set=counted)))
        candidates = pc.unique(positives.column("user_id").combine_chunks())
        # Only these users' earlier events matter: a large train split never enters the join whole.
        before = pa.concat_tables([_user_item(splits[s]) for s in SPLITS[:position]])
        before = before.filter(pc.is_in(before.column("user_id"), value_set=candidates))
        # A positive on an item the user already had is not recommendable, so not a truth.
        new = positives.join(
            before.group_by(["user_id", "item_id"]).aggregate([]),
            ["user_id", "item_id"],
            join_type="left anti",
        )
        users = pc.unique(new.column("user_id").combine_chunks())
        history = before.filter(pc.is_in(before.column("event"), value_set=counted))
        with_history = pc.is_in(users, value_set=pc.unique(history.column("user_id").combine_chunks()))
        with_train = pc.is_in(users, value_set=train_users)
        counts[split] = {
            "users": len(users),
            "without_history": int((~with_history.to_numpy(zero_copy_only=False)).sum()),
            "without_train": int((~with_train.to_numpy(zero_copy_only=False)).sum()),
        }
    return counts


def _user_item(table: pa.Table) -> pa.Table:
    """The user, item and event columns of an interactions table, ids as strings."""
    return pa.table(
        {
            "user_id": table.column("user_id").cast(pa.string()),
            "item_id": table.column("item_id").cast(pa.string()),
            "event": table.column("event").cast(pa.string()),
        }
    )


def _iso_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat()


def write_dataset(
    out: str,
    items: pa.Table,
    tables: dict[str, pa.Table],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Write a dataset directory and its manifest; returns the manifest written.

    Interaction tables are conformed to the contract; ``cold_items``, ``facets``, ``features`` and
    ``oracle_users`` are written as given. The manifest gains ``files`` and ``counts``.
    """
    unknown = set(tables) - set(SPLITS) - set(OPTIONAL_TABLES)
    if unknown:
        raise DataError(f"unknown dataset table(s) {sorted(unknown)}; expected {SPLITS + OPTIONAL_TABLES}")
    missing = [s for s in SPLITS if s not in tables]
    if missing:
        raise DataError(f"dataset needs the split(s) {missing}")
    io.makedirs(out)
    items = conform_items(items)
    io.write_table(items, io.join(out, ITEMS))
    counts = {"items": items.num_rows}
    files = [ITEMS]
    for name, table in tables.items():
        if name in INTERACTION_FILES:
            table = conform_interactions(table)
        io.write_table(table, io.join(out, f"{name}.parquet"))
        counts[name] = table.num_rows
        files.append(f"{name}.parquet")
    document = {
        "format_version": FORMAT_VERSION,
        "raymm_version": __version__,
        **manifest,
        "files": sorted(files),
        "counts": counts,
    }
    io.write_json(document, io.join(out, MANIFEST))
    return document


#: The item columns that training, ranking and evaluation read: the media stay on disk (6.2 GB of
#: the large benchmark's items file, read into every process that built a catalog).
CATALOG_ITEM_COLUMNS = ("item_id", "tags")


def load_dataset(
    path: str, tables: tuple[str, ...] | None = None, item_columns: tuple[str, ...] | None = None
) -> Dataset:
    """Read a dataset directory written by :func:`write_dataset` (synth or an importer).

    ``tables`` limits which optional tables are read; by default all listed in the manifest.
    ``item_columns`` limits the items file's columns read (those it lacks are skipped; the rest of
    the items contract comes back as nulls); by default every column, media included.
    Raises :class:`DataError` if the directory, manifest or a listed file is missing.
    """
    if not io.exists(path):
        raise DataError(f"dataset directory not found: {path}")
    manifest_uri = io.join(path, MANIFEST)
    if not io.exists(manifest_uri):
        raise DataError(
            f"{path} is not a raymm dataset: {MANIFEST} is missing "
            "(create one with `raymm data synth` or `raymm data import`)"
        )
    manifest = io.read_json(manifest_uri, "dataset manifest")
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise DataError(f"{manifest_uri}: manifest has no 'files' list")
    items_uri = io.join(path, ITEMS)
    columns = None
    if item_columns is not None:
        present = set(io.read_schema(items_uri, "items file").names)
        columns = [name for name in item_columns if name in present]
    items = conform_items(io.read_table(items_uri, "items file", columns=columns))
    loaded: dict[str, pa.Table] = {}
    for file in manifest["files"]:
        stem = file.removesuffix(".parquet")
        if stem == "items" or (tables is not None and stem not in tables and stem not in SPLITS):
            continue
        table = io.read_table(io.join(path, file), f"{stem} file")
        loaded[stem] = conform_interactions(table) if stem in INTERACTION_FILES else table
    return Dataset(items=items, tables=loaded, manifest=manifest)


def imported_features(path: str) -> str | None:
    """The URI of a dataset's precomputed ``features.parquet`` (an importer's), or None when it has none.

    Reads only the manifest; a directory that is not a dataset gives None (loading it reports that).
    """
    manifest_uri = io.join(path, MANIFEST)
    if not io.exists(manifest_uri):
        return None
    manifest = io.read_json(manifest_uri, "dataset manifest")
    files = manifest.get("files", []) if isinstance(manifest, dict) else []
    uri = io.join(path, FEATURES)
    return uri if FEATURES in files and io.exists(uri) else None


def item_ids(table: pa.Table) -> pa.Array:
    """The distinct item ids of a table, as one array."""
    return pc.unique(table.column("item_id").combine_chunks())
