"""The quickstart's live part on the session's model: ``running_app`` deploys the app with an
embedded broker, the replayed stream reaches the busiest user's state, freshness is measured, and
everything is taken down again, each shard writing its final snapshot."""

from __future__ import annotations

from pathlib import Path

from ray import serve

from raymm.cli import main
from raymm.stream.events import EVENTS_TOPIC
from raymm.stream.snapshot import SnapshotStore
from raymm.workflows.live import live_demo
from tests.conftest import Trained
from tests.fixtures import free_port


def test_the_live_demo_shows_events_changing_answers(trained: Trained, tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(trained.data)
    config = trained.config.model_copy(deep=True)
    config.out = str(tmp_path)
    config.serve.port = free_port()
    config.kafka = config.kafka.model_copy(update={"partitions": 2})
    try:
        demo = live_demo(config, str(trained.ranked), events=600, rate=2000, samples=5, progress=False)
    finally:
        # Serve keeps its HTTP options for as long as it runs: the next module starts its own.
        serve.shutdown()
    assert demo.replayed == 600 and demo.user_events
    assert demo.before["fallback"] == "unknown_user" and demo.after["fallback"] is None
    assert demo.before["items"] != demo.after["items"]
    assert len(demo.freshness_s) == 5 and all(0 < s < 10 for s in demo.freshness_s)
    # Shutdown asked every shard for its final snapshot: both partitions have one, at their ends.
    snapshots = SnapshotStore(str(tmp_path / "state"))
    restored = [snapshots.restore(EVENTS_TOPIC, p).snapshot for p in range(2)]
    assert all(s is not None for s in restored)
    assert sum(s.applied_offset + 1 for s in restored if s is not None) == 600 + 5


def test_serve_dry_run_prints_the_plan(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["serve", "--dry-run", "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert "deploy" in out and "127.0.0.1:8123" in out and "embedded noida broker" in out
