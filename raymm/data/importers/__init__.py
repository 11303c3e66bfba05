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

from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from raymm.data import io
from raymm.data.dataset import SPLITS, held_out_users, split_by_time, write_dataset
from raymm.data.importers import amazon2023, mmrec, movielens, recbole
from raymm.data.importers._tables import ImportedTables, add_missing_items
from raymm.data.schema import POSITIVE_EVENTS, conform_interactions, conform_items
from raymm.data.settings import ImportConfig
from raymm.errors import ConfigError, DataError

Reader = Callable[[ImportConfig, bool], ImportedTables]
Fractions = tuple[float, float, float]

#: Fewer test users than this and test metrics are too noisy to tell methods apart.
MIN_TEST_USERS = 500
#: A larger share of test users with an empty history and test metrics mostly measure cold users.
MAX_TEST_SHARE_WITHOUT_HISTORY = 0.5

IMPORTERS: dict[str, Reader] = {
    "movielens": movielens.read,
    "recbole": recbole.read,
    "amazon2023": amazon2023.read,
    "mmrec": mmrec.read,
}


def import_dataset(
    config: ImportConfig, out: str, progress: bool = True, events: Sequence[str] = POSITIVE_EVENTS
) -> dict[str, Any]:
    """Convert ``config.source`` in ``config.format`` into a raymm dataset at ``out``; returns its manifest.

    ``config.source`` is a directory or file, a local path or a pyarrow filesystem URI.
    Interactions are split globally by time with ``config.split`` unless the source carries its
    own split (mmrec's x_label). The manifest is the one
    :func:`~raymm.data.dataset.write_dataset` wrote: ``name``, ``source`` (``format``, ``path``
    and what the importer noted, e.g. the event mapping), ``split``, ``split_users`` (per held-out
    split, the users evaluation will score and how many of them have an empty history or no train
    event, :func:`~raymm.data.dataset.held_out_users`, with ``events`` as the counting events: pass
    ``model.user_state.events``), ``files``, ``counts`` and ``warnings`` (one sentence per thing the
    importer could not take as given or a degenerate split, see :func:`split_warnings`; [] when none).

    Raises :class:`ConfigError` when format or source is unset or ``events`` is empty, :class:`DataError` when the
    source is missing, and :class:`ImportFormatError` naming the file and line of malformed
    input; nothing is written in those cases.
    """
    if config.format is None:
        raise ConfigError(f"import.format is not set; choose one of {sorted(IMPORTERS)}")
    if config.source is None:
        raise ConfigError("import.source is not set; give the directory or file to import")
    if config.format not in IMPORTERS:
        raise ConfigError(f"import.format {config.format!r} is unknown; choose one of {sorted(IMPORTERS)}")
    if not events:
        raise ConfigError("no counting events given; name at least one (model.user_state.events)")
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
            resplit = None
        else:
            interactions = imported.interactions
            assert interactions is not None, "an importer returns interactions or splits"
            splits, boundaries = split_by_time(interactions, config.split)
            split_info = {"method": "time", "fractions": list(config.split), **boundaries}

            def resplit(fractions: Fractions) -> dict[str, int]:
                return held_out_users(split_by_time(interactions, fractions)[0], events)["test"]

        assert set(splits) == set(SPLITS), f"{config.format} importer returned splits {sorted(splits)}"
        # Conform before the first write, so a contract violation cannot leave half a dataset.
        items = conform_items(add_missing_items(imported.items, list(splits.values())))
        splits = {name: conform_interactions(table) for name, table in splits.items()}
        split_users = held_out_users(splits, events)
        steps.update()
        steps.set_postfix_str("writing")
        manifest = {
            "name": config.name or imported.name,
            "source": {"format": config.format, "path": config.source, **imported.details},
            "split": split_info,
            "split_users": split_users,
            "warnings": imported.warnings + split_warnings(split_users, split_info, resplit),
        }
        written = write_dataset(out, items, {**splits, **imported.extra_tables}, manifest)
        steps.update()
    return written


def split_warnings(
    split_users: dict[str, dict[str, int]],
    split_info: dict[str, Any],
    resplit: Callable[[Fractions], dict[str, int]] | None = None,
) -> list[str]:
    """Warnings for a degenerate test split, each with its numbers and what to try.

    ``split_users`` is :func:`~raymm.data.dataset.held_out_users`'s result; ``split_info`` the
    manifest's ``split`` (``method`` ``time`` with its ``fractions``, or ``source``). Warns when
    the test split has fewer than :data:`MIN_TEST_USERS` users or more than
    :data:`MAX_TEST_SHARE_WITHOUT_HISTORY` of them have an empty history.

    For a time split, ``resplit(fractions)`` gives the test split's ``users`` and
    ``without_history`` under other fractions, and the advice quotes them. A test user's history is
    everything before the test period, so both numbers depend only on where it starts (train +
    validation share): a larger test share adds users, and with them users whose first event falls
    in the test period; a smaller one leaves fewer users without a history, and fewer users. When
    both warnings fire no time split fixes both, and the advice says so rather than pulling
    ``import.split`` both ways: it points at the smaller test share only, since cold-user metrics
    pass for the model's while noisy ones show as such.
    """
    users, empty = split_users["test"]["users"], split_users["test"]["without_history"]
    few = users < MIN_TEST_USERS
    cold = users > 0 and empty / users > MAX_TEST_SHARE_WITHOUT_HISTORY
    now = split_users["test"]
    by_time = split_info.get("method") == "time"
    train, validation, test = (float(f) for f in split_info["fractions"]) if by_time else (1.0, 0.0, 0.0)
    fractions = (train, validation, test)
    column = split_info.get("column") or "source"
    source = (
        f"the split is the source's own ({column}) and is kept as given; re-split the source to change it"
    )
    warnings = []
    if few:
        remedy = _larger_test_share(fractions, resplit, now, cold) if by_time else source
        warnings.append(
            f"degenerate split: the test split has {users:,} users, fewer than {MIN_TEST_USERS:,}, so test "
            f"metrics are noisy; {remedy}"
        )
    if cold:
        remedy = _smaller_test_share(fractions, resplit, now) if by_time else source
        warnings.append(
            f"degenerate split: {empty:,} of {users:,} test users ({empty / users:.0%}) have an empty history "
            "(no event of model.user_state.events in train or validation), more than "
            f"{MAX_TEST_SHARE_WITHOUT_HISTORY:.0%}, so test metrics mostly measure users the model meets with "
            f"an empty history; {remedy}"
        )
    return warnings


def _split_option(fractions: Fractions) -> str:
    return "import.split=[" + ",".join(f"{f:g}" for f in fractions) + "]"


def _fractions(validation: float, test: float) -> Fractions:
    """``(1 - validation - test, validation, test)``, rounded so the three print short and sum to 1."""
    validation, test = round(validation, 4), round(test, 4)
    return round(1.0 - validation - test, 4), validation, test


def _share(numbers: dict[str, int]) -> float:
    return numbers["without_history"] / numbers["users"] if numbers["users"] else 0.0


def _counts(numbers: dict[str, int]) -> str:
    users, empty = numbers["users"], numbers["without_history"]
    share = f" ({_share(numbers):.0%})" if users else ""
    return f"{users:,} test users, {empty:,} of them{share} with an empty history"


def _larger_test_share(
    fractions: Fractions,
    resplit: Callable[[Fractions], dict[str, int]] | None,
    now: dict[str, int],
    cold: bool,
) -> str:
    """Advice for too few test users: a larger test share (taken from train), with its numbers."""
    train, validation, test = fractions
    what = f"the global time split gives test the last {test:.0%} of events"
    if train <= 0:
        return f"{what}, and train has no share left to give it"
    larger = [_fractions(validation, test + min(step, train / 2)) for step in (test, test / 2)]
    if cold:
        # Both warnings fire: a larger test share would make the next one worse, so it only says so.
        quoted = f": {_counts(resplit(larger[0]))}" if resplit is not None else ""
        return (
            f"{what}; a larger test share adds users, but more of them with an empty history "
            f"({_split_option(larger[0])}{quoted}), see the next warning"
        )
    if resplit is None:
        return (
            f"{what}, and a larger test share gives it more users (and more whose first event falls in it, "
            f"with an empty history): --set '{_split_option(larger[0])}'"
        )
    tried = [(option, resplit(option)) for option in larger]
    option, numbers = tried[0]
    better = [
        (option, numbers)
        for option, numbers in tried
        if numbers["users"] > now["users"] and _share(numbers) <= MAX_TEST_SHARE_WITHOUT_HISTORY
    ]
    if better:
        option, numbers = better[0]
        return (
            f"{what}, and a larger test share gives it more users: --set '{_split_option(option)}' gives "
            f"{_counts(numbers)}"
        )
    if numbers["users"] <= now["users"]:
        return f"{what}, and a larger one adds no users here ({_split_option(option)}: {_counts(numbers)})"
    return (
        f"{what}; a larger test share adds users, but mostly ones whose first event falls in it, with an "
        f"empty history ({_split_option(option)}: {_counts(numbers)}), so keep the split and read test "
        "metrics as noisy"
    )


def _smaller_test_share(
    fractions: Fractions, resplit: Callable[[Fractions], dict[str, int]] | None, now: dict[str, int]
) -> str:
    """Advice for mostly empty histories: a smaller test share (given to train), with its numbers."""
    train, validation, test = fractions
    why = (
        f"a test user's history is everything before the test period (train and validation, the first "
        f"{train + validation:.0%} of events; moving events between the two changes nothing for test), so "
        "these users' first event falls in the test period"
    )
    smaller = _fractions(validation, test / 2)
    if resplit is None:
        return (
            f"{why}; a smaller test share starts it later and leaves fewer of them, and fewer test users: "
            f"--set '{_split_option(smaller)}'; else read test metrics as cold-user metrics"
        )
    after = resplit(smaller)
    if (
        not after["users"]
        or after["without_history"] >= now["without_history"]
        or _share(after) >= _share(now)
    ):
        return (
            f"{why}; a smaller test share does not make them fewer or a smaller part ({_split_option(smaller)}: "
            f"{_counts(after)}), so read test metrics as cold-user metrics"
        )
    noisy = (
        f"; that is fewer than {MIN_TEST_USERS:,} test users, and no time split gives both more test users "
        "and fewer with an empty history, so take it and read test metrics as noisy, or keep the split "
        "and read them as cold-user metrics"
        if after["users"] < MIN_TEST_USERS
        else ""
    )
    return (
        f"{why}; a smaller test share starts the test period later and leaves fewer of them: "
        f"--set '{_split_option(smaller)}' gives {_counts(after)}{noisy}"
    )
