"""The shared import step: users per held-out split and the warnings for a degenerate test split."""

from __future__ import annotations

from raymm.data.importers import MIN_TEST_USERS, split_warnings

TIME_SPLIT = {"method": "time", "fractions": [0.8, 0.1, 0.1]}


def _users(test: int, without_train: int) -> dict[str, dict[str, int]]:
    return {
        "validation": {"users": test, "without_train": 0},
        "test": {"users": test, "without_train": without_train},
    }


def test_a_healthy_test_split_gives_no_warning() -> None:
    assert split_warnings(_users(MIN_TEST_USERS, MIN_TEST_USERS // 2), TIME_SPLIT) == []


def test_few_test_users_warn_with_the_number_and_a_larger_test_share() -> None:
    [warning] = split_warnings(_users(166, 10), TIME_SPLIT)
    assert warning.startswith("degenerate split: the test split has 166 users, fewer than 500")
    assert "last 10% of events" in warning and "--set 'import.split=[0.7,0.15,0.15]'" in warning


def test_mostly_cold_test_users_warn_with_both_numbers() -> None:
    # The numbers reported for recbole's ml-100k with the default time split.
    few, cold = split_warnings(_users(166, 97), TIME_SPLIT)
    assert "166 users, fewer than 500" in few
    assert cold.startswith("degenerate split: 97 of 166 test users (58%) have no train events, more than 50%")
    assert "first 80% of events" in cold and "import.split" in cold


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
        "validation": {"users": 1, "without_train": 1},
        "test": {"users": 1, "without_train": 1},
    }
    assert [w.split(":")[0] for w in manifest["warnings"]] == ["degenerate split"] * 2
