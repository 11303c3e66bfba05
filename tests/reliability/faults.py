"""What the fault tests share: a noida broker the test owns (so it may kill it), waiting for a
condition, and a topic's end offsets."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kafka import KafkaConsumer, TopicPartition

from raymm.stream.broker import EmbeddedBroker
from tests.fixtures import free_port

T = TypeVar("T")


def until(check: Callable[[], T], timeout_s: float, what: str) -> T:
    """``check()``'s first truthy result, polled every 0.1 s; AssertionError naming ``what`` and
    the last result after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s (last: {result!r})")
        time.sleep(0.1)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end offset (the offset the next message will get)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


class OwnedNoida:
    """A noida broker of the test's own on a fixed port and data directory, so the test can kill
    it and start it again where clients expect it (the session's shared brokers must stay up)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.broker: EmbeddedBroker | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> OwnedNoida:
        self.broker = EmbeddedBroker("noida", data_dir=self.data_dir, port=self.port).start()
        return self

    def kill(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the broker process only, and wait until it is gone."""
        assert self.broker is not None and self.broker.process is not None
        os.kill(self.broker.process.pid, sig)
        self.broker.process.wait(timeout=30)
        self.broker.stop()  # reaps and removes its working directory; data_dir stays
        self.broker = None

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def persisted_ends(self, topic: str) -> dict[int, int]:
        """Each partition's high watermark as noida last wrote it to disk (it writes about once a
        second, so a SIGKILL loses what came after)."""
        try:
            document = json.loads((self.data_dir / "kafka.json").read_text())
        except (OSError, ValueError):
            return {}
        for name, described in document["topics"]:
            if name == topic:
                return {int(p): part["high_watermark"] for p, part in described["partitions"]}
        return {}
