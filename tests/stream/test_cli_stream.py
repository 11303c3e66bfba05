"""``raymm produce`` and ``raymm consume`` against a real broker: a dataset's stream.parquet is
replayed onto raymm.events, a consumer keeps its users' state by a model's user-state spec and
snapshots it, and a second run resumes from the snapshots instead of replaying."""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymm.cli import main
from raymm.models.config import UserStateConfig
from raymm.stream import broker
from raymm.stream.broker import EmbeddedBroker
from raymm.stream.events import EVENTS_TOPIC
from raymm.stream.snapshot import SnapshotStore

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _stream(path: Path, n: int) -> None:
    pq.write_table(
        pa.table(
            {
                "user_id": [f"u{i % 11}" for i in range(n)],
                "item_id": [f"i{(5 * i) % 17}" for i in range(n)],
                "event": [("view", "click", "like")[i % 3] for i in range(n)],
                "ts": pa.array(
                    [EPOCH + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("ms", tz="UTC")
                ),
                "event_id": [f"e{i}" for i in range(n)],
            }
        ),
        path,
    )


def _model(directory: Path) -> None:
    directory.mkdir(parents=True)
    spec = UserStateConfig(max_history=4, events=["click", "like"]).model_dump()
    (directory / "manifest.json").write_text(json.dumps({"config": {"model": {"user_state": spec}}}))


@pytest.fixture
def noida() -> EmbeddedBroker:
    """A broker of the test's own: these commands use the fixed topic names."""
    with EmbeddedBroker("noida") as broker:
        yield broker  # type: ignore[misc]


def test_produce_then_consume_keeps_state_and_resumes_from_snapshots(
    noida: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _stream(tmp_path / "stream.parquet", 300)
    _model(tmp_path / "model")
    common = [
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--set",
        f"kafka.bootstrap_servers={noida.bootstrap_servers}",
    ]
    common += ["--set", "kafka.partitions=3"]
    assert main(["produce", "--events", str(tmp_path / "stream.parquet"), "--limit", "200", *common]) == 0
    assert re.search(r"sent\s+200 to raymm\.events", capsys.readouterr().out)

    consume = ["consume", "--model", str(tmp_path / "model"), "--drain", *common]
    assert main(consume) == 0
    out = capsys.readouterr().out
    assert re.search(r"events applied\s+200 \(0 duplicates skipped\)", out)
    assert re.search(r"partitions\s+0, 1, 2\n", out)
    snapshots = SnapshotStore(str(tmp_path / "out" / "state"))
    restored = [snapshots.restore(EVENTS_TOPIC, p).snapshot for p in range(3)]
    assert all(s is not None for s in restored)
    users = {u: r for s in restored if s is not None for u, r in s.users.items()}
    assert len(users) == 11 and all(len(r.history) <= 4 for r in users.values())
    assert sum(r.n_events for r in users.values()) == 200

    # The rest of the file; a second consumer starts from the snapshots and applies only the new 100.
    assert main(["produce", "--events", str(tmp_path / "stream.parquet"), *common]) == 0
    capsys.readouterr()
    assert main(consume) == 0
    assert re.search(r"events applied\s+100 \(", capsys.readouterr().out)


def test_stream_commands_say_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "--out", str(tmp_path), "--quiet"]) == 2
    assert "needs a Kafka: pass --bootstrap" in capsys.readouterr().err
    _model(tmp_path / "model")
    code = main(
        ["consume", "--model", str(tmp_path / "model"), "--rank", "2", "--world-size", "2", "--quiet"]
    )
    assert code == 2 and "--rank must be in [0, --world-size)" in capsys.readouterr().err
    assert main(["consume", "--model", str(tmp_path / "nowhere"), "--bootstrap", "x:1", "--quiet"]) == 2
    assert "manifest" in capsys.readouterr().err
    assert main(["broker", "--dry-run", "--set", f"kafka.partitions={uuid.uuid4().int % 5 + 1}"]) == 0
    assert "raymm.events" in capsys.readouterr().out


def test_a_missing_file_or_an_unreachable_kafka_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["--out", str(tmp_path), "--quiet", "--bootstrap", "127.0.0.1:9"]
    assert main(["produce", "--events", str(tmp_path / "nope.parquet"), *common]) == 2
    assert "nope.parquet does not exist" in capsys.readouterr().err
    _stream(tmp_path / "stream.parquet", 5)
    # Nothing listens on port 9: kafka-python's bootstrap error becomes one line, exit 2. The
    # admin client that creates the topics gives up after 30 s by default; after 1 s here, with
    # the same error.
    monkeypatch.setattr(broker, "ensure_topics", functools.partial(broker.ensure_topics, timeout_s=1.0))
    assert main(["produce", "--events", str(tmp_path / "stream.parquet"), *common]) == 2
    assert "raymm: error: Kafka:" in capsys.readouterr().err
