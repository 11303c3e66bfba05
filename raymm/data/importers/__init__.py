"""Importers: public recommendation datasets converted into a raymm dataset directory.

``import_dataset(config, out)`` reads ``config.source`` in ``config.format`` and writes the layout
of :mod:`raymm.data.dataset`. One module per format, each exposing
``read(config, progress) -> ImportedTables``:

========== ===================================================================================
movielens  ml-100k, ml-1m, ml-latest(-small); layout detected from the files present
recbole    RecBole atomic files ``<name>.inter/.item/.kg/.link``
amazon2023 Amazon Reviews 2023 JSONL (``<Category>.jsonl`` + ``meta_<Category>.jsonl``, .gz ok)
mmrec      MMRec layout (``<name>.inter`` with x_label, ``*_feat.npy``, id mappings)
========== ===================================================================================

Shared conventions: ids become strings; explicit ratings map to events by
``config.like_threshold`` (rating >= threshold -> ``like``, else ``view``; Amazon reviews ->
``like``/``purchase`` since a review implies a purchase); timestamps are timestamp[ms, UTC], and
where a source has none (recbole and mmrec may lack the column) file order stands for time, with a
warning; item tags are sorted and de-duplicated, null where an item has none. Everything is built in
memory before :func:`~raymm.data.dataset.write_dataset` is called, so bad input never leaves a
half-written dataset behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from raymm.config import ImportConfig
from raymm.data import io
from raymm.data.dataset import SPLITS, held_out_users, split_by_time, write_dataset
from raymm.data.importers import amazon2023, mmrec, movielens, recbole
from raymm.data.importers._tables import ImportedTables, add_missing_items
from raymm.data.schema import conform_interactions, conform_items
from raymm.errors import ConfigError, DataError

Reader = Callable[[ImportConfig, bool], ImportedTables]

#: Fewer test users than this and test metrics are too noisy to tell methods apart.
MIN_TEST_USERS = 500
#: A larger share of test users without train events and test metrics mostly measure cold users.
MAX_TEST_SHARE_WITHOUT_TRAIN = 0.5

IMPORTERS: dict[str, Reader] = {
    "movielens": movielens.read,
    "recbole": recbole.read,
    "amazon2023": amazon2023.read,
    "mmrec": mmrec.read,
}


def import_dataset(config: ImportConfig, out: str, progress: bool = True) -> dict[str, Any]:
    """Convert ``config.source`` in ``config.format`` into a raymm dataset at ``out``; returns its manifest.

    ``config.source`` is a directory or file, a local path or a pyarrow filesystem URI.
    Interactions are split globally by time with ``config.split`` unless the source carries its
    own split (mmrec's x_label). The manifest is the one
    :func:`~raymm.data.dataset.write_dataset` wrote: ``name``, ``source`` (``format``, ``path``
    and what the importer noted, e.g. the event mapping), ``split``, ``split_users`` (users per
    held-out split and how many lack train events, :func:`~raymm.data.dataset.held_out_users`),
    ``files``, ``counts`` and ``warnings`` (one sentence per thing the importer could not take as
    given or a degenerate split, see :func:`split_warnings`; [] when none).

    Raises :class:`ConfigError` when format or source is unset, :class:`DataError` when the
    source is missing, and :class:`ImportFormatError` naming the file and line of malformed
    input; nothing is written in those cases.
    """
    if config.format is None:
        raise ConfigError(f"import.format is not set; choose one of {sorted(IMPORTERS)}")
    if config.source is None:
        raise ConfigError("import.source is not set; give the directory or file to import")
    if config.format not in IMPORTERS:
        raise ConfigError(f"import.format {config.format!r} is unknown; choose one of {sorted(IMPORTERS)}")
    if not io.exists(config.source):
        raise DataError(f"import source not found: {config.source}")
    steps = tqdm(total=3, desc=f"import {config.format}", unit=" steps", disable=not progress)
    with steps:
        steps.set_postfix_str("reading")
        imported = IMPORTERS[config.format](config, progress)
        steps.update()
        steps.set_postfix_str("splitting")
        if imported.splits is not None:
            splits = imported.splits
            split_info: dict[str, Any] = {"method": "source", "column": imported.split_column}
        else:
            assert imported.interactions is not None, "an importer returns interactions or splits"
            splits, boundaries = split_by_time(imported.interactions, config.split)
            split_info = {"method": "time", "fractions": list(config.split), **boundaries}
        assert set(splits) == set(SPLITS), f"{config.format} importer returned splits {sorted(splits)}"
        # Conform before the first write, so a contract violation cannot leave half a dataset.
        items = conform_items(add_missing_items(imported.items, list(splits.values())))
        splits = {name: conform_interactions(table) for name, table in splits.items()}
        split_users = held_out_users(splits)
        steps.update()
        steps.set_postfix_str("writing")
        manifest = {
            "name": config.name or imported.name,
            "source": {"format": config.format, "path": config.source, **imported.details},
            "split": split_info,
            "split_users": split_users,
            "warnings": imported.warnings + split_warnings(split_users, split_info),
        }
        written = write_dataset(out, items, {**splits, **imported.extra_tables}, manifest)
        steps.update()
    return written


def split_warnings(split_users: dict[str, dict[str, int]], split_info: dict[str, Any]) -> list[str]:
    """Warnings for a degenerate test split, each with its numbers and what to try.

    ``split_users`` is :func:`~raymm.data.dataset.held_out_users`'s result; ``split_info`` the
    manifest's ``split`` (``method`` ``time`` with its ``fractions``, or ``source``). Warns when
    the test split has fewer than :data:`MIN_TEST_USERS` users or more than
    :data:`MAX_TEST_SHARE_WITHOUT_TRAIN` of them have no train events.
    """
    users = split_users["test"]["users"]
    without_train = split_users["test"]["without_train"]
    by_time = split_info.get("method") == "time"
    if by_time:
        train_share, _, test_share = split_info["fractions"]
        few_remedy = (
            f"the global time split gives test the last {test_share:.0%} of events; a larger test share "
            "(e.g. --set 'import.split=[0.7,0.15,0.15]') gives it more users"
        )
        cold_remedy = (
            f"the global time split ends train after the first {train_share:.0%} of events, and users whose "
            "first event comes later have no history; import.split moves that boundary (e.g. "
            "--set 'import.split=[0.9,0.05,0.05]'), else read test metrics as cold-user metrics"
        )
    else:
        column = split_info.get("column") or "source"
        few_remedy = cold_remedy = (
            f"the split is the source's own ({column}) and is kept as given; re-split the source to change it"
        )
    warnings = []
    if users < MIN_TEST_USERS:
        warnings.append(
            f"degenerate split: the test split has {users:,} users, fewer than {MIN_TEST_USERS:,}, so test "
            f"metrics are noisy; {few_remedy}"
        )
    if users and without_train / users > MAX_TEST_SHARE_WITHOUT_TRAIN:
        warnings.append(
            f"degenerate split: {without_train:,} of {users:,} test users ({without_train / users:.0%}) have "
            f"no train events, more than {MAX_TEST_SHARE_WITHOUT_TRAIN:.0%}, so test metrics mostly measure "
            f"users the model meets with an empty history; {cold_remedy}"
        )
    return warnings
