"""The quickstart's plan and result (:mod:`raymm.workflows.quickstart`), and the live part's text
(:meth:`raymm.workflows.live.LiveDemo.render`); the whole run is ``make quickstart``'s."""

from __future__ import annotations

from pathlib import Path

from raymm.config import load_config
from raymm.workflows.live import LiveDemo
from raymm.workflows.quickstart import QuickstartResult, forget_previous_live_state, plan_quickstart


def test_the_plan_is_rooted_at_out_without_changing_the_config(tmp_path: Path) -> None:
    config = load_config("configs/quickstart.yaml", [])
    plan = plan_quickstart(config, out=str(tmp_path))
    targets = [target for _, target in plan.steps]
    assert targets[:2] == [str(tmp_path / "data")] * 2
    assert str(tmp_path / "model") in targets and f"{tmp_path / 'model'}/ranker" in targets
    assert str(tmp_path / "report") in targets
    assert config.out != str(tmp_path)


def test_a_run_stopped_by_validation_prints_only_its_problems() -> None:
    result = QuickstartResult("out", {"counts": {}}, ["test.parquet: bad", "items.parquet: worse"])
    assert not result.ok and result.summary_rows() == []
    assert result.details() == ["  problem: test.parquet: bad", "  problem: items.parquet: worse"]


def test_the_live_part_shows_before_after_freshness_and_search() -> None:
    answer = {"items": [{"item_id": f"i{n}"} for n in range(12)], "fallback": None}
    demo = LiveDemo(
        url="http://h:1",
        docs_url="http://h:1/docs",
        bootstrap_servers="k:9",
        replayed=2000,
        replay_rate=1000.0,
        user="u1",
        user_events=[{"event": "click", "item_id": "i3"}],
        before={"items": [{"item_id": "i9"}], "fallback": "unknown_user"},
        after=answer,
        freshness_s=[0.1, 0.2, 0.3],
        search={"rank": 0, "query": "q", "item_id": "new", "source": "i4", "answer": answer},
    )
    lines = demo.render().splitlines()
    assert lines[1] == "live: http://h:1 (docs http://h:1/docs); Kafka k:9"
    assert lines[2] == "  replayed 2,000 events of stream.parquet at 1,000 events/s"
    assert lines[4] == "    before: i9  [fallback: unknown_user]"
    assert lines[5] == "    after:  " + ", ".join(f"i{n}" for n in range(10))
    assert "p50 200 ms" in lines[6]
    assert "is not in the top 10" in lines[7]


def test_a_rerun_starts_the_live_part_from_empty_state_but_never_touches_the_users(tmp_path: Path) -> None:
    """An earlier run's snapshots already hold the replayed event ids: kept, the replay would
    change nothing and the demo's before/after would be equal."""
    config = load_config("configs/quickstart.yaml", [f"out={tmp_path}"])
    for stage in ("state", "broker", "model"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "kept").write_text("x")
    assert sorted(forget_previous_live_state(config)) == [str(tmp_path / "broker"), str(tmp_path / "state")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert forget_previous_live_state(config) == []  # nothing left to remove
    for stage in ("state", "broker"):
        (tmp_path / stage).mkdir()
    for override in ("kafka.bootstrap_servers=k:9092", f"stream.snapshot_uri={tmp_path}/state"):
        users = load_config("configs/quickstart.yaml", [f"out={tmp_path}", override])
        assert forget_previous_live_state(users) == []
    assert (tmp_path / "state").is_dir() and (tmp_path / "broker").is_dir()
