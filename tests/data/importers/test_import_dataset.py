"""The shared import step: the users evaluation will score per held-out split, and the warnings
(with advice that holds) for a degenerate test split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymm.config import RaymmConfig
from raymm.data.dataset import load_dataset
from raymm.data.importers import MIN_TEST_USERS, split_warnings
from raymm.errors import ConfigError
from raymm.eval.evaluate import describe, eval_setup
from raymm.recommend.catalog import build_catalog
from raymm.recommend.history import eval_users

TIME_SPLIT = {"method": "time", "fractions": [0.8, 0.1, 0.1]}
SET_SPLIT = re.compile(r"--set 'import\.split=(\[[^\]]*\])'")


def _users(test: int, without_history: int) -> dict[str, dict[str, int]]:
    return {
        "validation": {"users": test, "without_history": 0, "without_train": 0},
        "test": {"users": test, "without_history": without_history, "without_train": without_history},
    }


def _bursty_inter(span_days: float, burst_days: float, n_users: int = 600, seed: int = 0) -> str:
    """A RecBole .inter like MovieLens's: users arrive over ``span_days`` and each rates in a burst of
    about ``burst_days``, so a global time split meets test users who arrived in the test period."""
    rng = np.random.default_rng(seed)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(n_users):
        n = int(rng.integers(2, 25))
        times = rng.uniform(0, span_days) + np.sort(rng.exponential(burst_days, n))
        items = rng.choice(80, n)  # repeats happen: a repeat is no truth, in evaluation as here
        ratings = rng.integers(1, 6, n)
        lines += [
            f"u{user}\ti{i}\t{r}\t{t * 86_400:.0f}" for i, r, t in zip(items, ratings, times, strict=True)
        ]
    return "\n".join(lines) + "\n"


def _evaluator_counts(config: RaymmConfig, data: Path, features: Path) -> dict[str, dict[str, int]]:
    """Who ``raymm evaluate`` scores: its test protocol, and its validation users before sampling."""
    test = describe(eval_setup(config, str(data), str(features)))["protocols"]["test"]
    dataset = load_dataset(str(data))
    train, validation = dataset.interactions("train"), dataset.interactions("validation")
    catalog = build_catalog(pq.read_table(features), dataset.items, train)
    spec = config.model.user_state
    users = eval_users(train, validation, catalog, spec.events, spec.max_history)
    scored = users.truth.sizes > 0
    return {
        "validation": {
            "users": int(scored.sum()),
            "without_history": int((scored & (users.history_length == 0)).sum()),
        },
        "test": {"users": test["users"], "without_history": test["users_without_history"]},
    }


@pytest.mark.parametrize("events", [None, ["like"]])
def test_split_users_are_the_users_the_evaluator_meets(
    write_source, run_import, tmp_path: Path, events: list[str] | None
) -> None:
    manifest, data = run_import(
        write_source({"ml.inter": _bursty_inter(365, 10)}), format="recbole", events=events
    )
    ids = data.items.column("item_id").to_pylist()
    vectors = np.random.default_rng(1).normal(size=(len(ids), 4)).astype(np.float32)
    features = tmp_path / "features.parquet"  # a vector for every item: the catalog holds them all
    pq.write_table(
        pa.table({"item_id": ids, "text": pa.array(list(vectors), pa.list_(pa.float32(), 4))}), features
    )
    config = RaymmConfig()
    if events is not None:  # the user-state spec alone (a whole config would want rank's events to match)
        config.model.user_state.events = events

    counted = {s: {k: n[k] for k in ("users", "without_history")} for s, n in manifest["split_users"].items()}
    assert counted == _evaluator_counts(config, tmp_path / "out", features)
    test = manifest["split_users"]["test"]
    # The old count (no train event; validation events ignored) said far more had no history.
    assert 0 < test["without_history"] < test["without_train"]


def _suggested_split(warnings: list[str]) -> list[float]:
    """The one ``--set 'import.split=[...]'`` the warnings advise (never two that pull apart)."""
    [suggested] = [match for w in warnings for match in SET_SPLIT.findall(w)]
    return [float(f) for f in json.loads(suggested)]


def test_the_advice_for_mostly_empty_histories_lowers_their_count(write_source, run_import) -> None:
    source = write_source({"ml.inter": _bursty_inter(1000, 20)})
    manifest, _ = run_import(source, format="recbole")
    before = manifest["split_users"]["test"]
    few, cold = manifest["warnings"]
    assert few.startswith(f"degenerate split: the test split has {before['users']} users")
    assert "a larger test share adds users, but more of them with an empty history" in few
    assert cold.startswith(f"degenerate split: {before['without_history']} of {before['users']} test users")
    assert "first 90% of events" in cold and "moving events between the two changes nothing for test" in cold

    split = _suggested_split(manifest["warnings"])
    assert split == [0.85, 0.1, 0.05]
    after = run_import(source, format="recbole", split=split)[0]["split_users"]["test"]
    assert after["without_history"] < before["without_history"]
    assert after["without_history"] / after["users"] < before["without_history"] / before["users"]
    share = after["without_history"] / after["users"]
    assert f"gives {after['users']} test users, {after['without_history']} of them ({share:.0%})" in cold
    assert "no time split gives both more test users and fewer with an empty history" in cold


def test_the_advice_for_few_test_users_adds_users_without_making_them_mostly_cold(
    write_source, run_import
) -> None:
    source = write_source({"ml.inter": _bursty_inter(365, 30)})
    manifest, _ = run_import(source, format="recbole")
    before = manifest["split_users"]["test"]
    [few] = manifest["warnings"]
    split = _suggested_split(manifest["warnings"])
    assert split == [0.7, 0.1, 0.2]
    applied = run_import(source, format="recbole", split=split)[0]
    after = applied["split_users"]["test"]
    assert before["users"] < after["users"] and f"gives {after['users']} test users" in few
    # Still under 500 users, but no more than half of them with an empty history: no second warning.
    [still_few] = applied["warnings"]
    assert still_few.startswith(f"degenerate split: the test split has {after['users']} users")
    assert after["without_history"] / after["users"] <= 0.5


def test_the_reported_ml100k_numbers_warn_only_of_few_users() -> None:
    # recbole's ml-100k, default time split: 166 test users, 97 without train events but only 76
    # with an empty history once validation counts (46%, not more than half).
    [warning] = split_warnings(_users(166, 76), TIME_SPLIT, lambda f: {"users": 300, "without_history": 140})
    assert warning.startswith("degenerate split: the test split has 166 users, fewer than 500")
    assert "last 10% of events" in warning
    assert (
        "--set 'import.split=[0.7,0.1,0.2]' gives 300 test users, 140 of them (47%) with an empty history"
        in warning
    )


def test_a_larger_test_share_that_is_mostly_cold_is_not_advised() -> None:
    [warning] = split_warnings(_users(166, 76), TIME_SPLIT, lambda f: {"users": 300, "without_history": 200})
    assert (
        "--set" not in warning and "import.split=[0.7,0.1,0.2]: 300 test users, 200 of them (67%)" in warning
    )
    assert warning.endswith("so keep the split and read test metrics as noisy")


def test_a_smaller_test_share_that_does_not_help_is_not_advised() -> None:
    few, cold = split_warnings(_users(166, 97), TIME_SPLIT, lambda f: {"users": 90, "without_history": 60})
    assert "--set" not in few + cold
    assert "import.split=[0.85,0.1,0.05]: 90 test users, 60 of them (67%)" in cold
    assert cold.endswith("so read test metrics as cold-user metrics")


def test_without_resplit_the_advice_is_the_direction_only() -> None:
    few, cold = split_warnings(_users(166, 97), TIME_SPLIT)
    assert _suggested_split([few, cold]) == [0.85, 0.1, 0.05]
    assert "--set 'import.split=[0.7,0.1,0.2]'" in split_warnings(_users(166, 10), TIME_SPLIT)[0]


def test_a_healthy_test_split_gives_no_warning() -> None:
    def resplit(fractions: tuple[float, float, float]) -> dict[str, int]:
        raise AssertionError("no warning, so no other split is tried")

    assert split_warnings(_users(MIN_TEST_USERS, MIN_TEST_USERS // 2), TIME_SPLIT, resplit) == []


def test_a_source_split_names_its_column_instead_of_import_split() -> None:
    warnings = split_warnings(_users(3, 2), {"method": "source", "column": "x_label"})
    assert len(warnings) == 2
    assert all("source's own (x_label)" in w and "import.split" not in w for w in warnings)


def test_an_empty_test_split_warns_once() -> None:
    [warning] = split_warnings(_users(0, 0), TIME_SPLIT)
    assert "the test split has 0 users" in warning


def test_the_import_manifest_holds_the_numbers_and_the_warnings(write_source, run_import) -> None:
    inter = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{user}\ti{k}\t{k}\n" for k, user in enumerate(["u1"] * 8 + ["u2", "u3"])
    )
    manifest, _ = run_import(write_source({"t.inter": inter}), format="recbole")
    assert manifest["split_users"] == {
        "validation": {"users": 1, "without_history": 1, "without_train": 1},
        "test": {"users": 1, "without_history": 1, "without_train": 1},
    }
    assert [w.split(":")[0] for w in manifest["warnings"]] == ["degenerate split"] * 2


def test_no_counting_events_is_a_clear_error_and_writes_nothing(
    write_source, run_import, tmp_path: Path
) -> None:
    source = write_source({"t.inter": "user_id:token\titem_id:token\nu1\ti1\n"})
    with pytest.raises(ConfigError, match=r"no counting events given.*model\.user_state\.events"):
        run_import(source, format="recbole", events=[])
    assert not (tmp_path / "out").exists()
