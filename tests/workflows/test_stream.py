"""The stream workflows (:mod:`raymm.workflows.stream`) against real brokers: a replay of the output
root's stream.parquet, a draining consumer that resumes from its snapshots, and an embedded broker
that reports where it listens once its topics exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymm.config import load_config
from raymm.errors import RaymmError
from raymm.stream.broker import EmbeddedBroker
from raymm.workflows.stream import BrokerRunning, ConsumeOptions, consume, produce, run_broker
from tests.stream.test_cli_stream import _model, _stream


def test_produce_then_consume_from_the_output_root(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _stream(tmp_path / "data" / "stream.parquet", 120)
    _model(tmp_path / "model")
    with EmbeddedBroker("noida") as broker:
        config = load_config(
            None,
            [f"out={tmp_path}", f"kafka.bootstrap_servers={broker.bootstrap_servers}", "kafka.partitions=2"],
        )
        sent = produce(config, limit=100, progress=False)
        assert sent.events == str(tmp_path / "data" / "stream.parquet") and sent.replay.sent == 100
        assert dict(sent.summary_rows())["sent"] == f"100 to raymm.events on {broker.bootstrap_servers}"

        drained = consume(config, options=ConsumeOptions(drain=True, timeout_s=120))
        assert drained.ok and drained.metrics.applied == 100 and drained.metrics.snapshots > 0
        assert drained.snapshots == config.snapshot_uri()
        assert dict(drained.summary_rows())["events applied"] == "100 (0 duplicates skipped)"

        produce(config, progress=False)  # all 120: the second consumer applies only the last 20
        assert consume(config, options=ConsumeOptions(drain=True, timeout_s=120)).metrics.applied == 20


def test_the_stream_workflows_name_what_is_missing(tmp_path: Path) -> None:
    config = load_config(None, [f"out={tmp_path}"])
    with pytest.raises(RaymmError, match="raymm produce needs a Kafka: pass --bootstrap"):
        produce(config)
    with pytest.raises(RaymmError, match=r"--rank must be in \[0, --world-size\), got 2 of 2"):
        consume(config, bootstrap="x:1", options=ConsumeOptions(rank=2, world_size=2))


class _Stop(Exception):
    pass


def test_the_broker_reports_its_address_once_its_topics_exist(tmp_path: Path) -> None:
    config = load_config(None, [f"out={tmp_path}", "kafka.partitions=2"])
    ready: list[BrokerRunning] = []

    def stop(running: BrokerRunning) -> None:
        ready.append(running)
        raise _Stop

    with pytest.raises(_Stop):
        run_broker(config, kind="tansu", on_ready=stop)
    (running,) = ready
    assert running.kind == "tansu" and running.topics == config.kafka.topics()
    rows = dict(running.summary_rows())
    assert rows["use it with"] == f"--set kafka.bootstrap_servers={running.bootstrap_servers}"
    assert rows["broker"] == "tansu (embedded, in memory)"
