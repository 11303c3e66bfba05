"""A consumer in a process of its own, for the kill test: ``python -m tests.stream.consumer_process
BOOTSTRAP TOPIC SNAPSHOT_DIR``. It consumes with small polls and frequent snapshots and prints one
line per poll with the number of events applied so far, until the test kills it with SIGKILL."""

from __future__ import annotations

import sys
import time

from raymm.stream.consumer import EventConsumer
from raymm.stream.snapshot import SnapshotStore
from raymm.stream.state import UserStateStore
from tests.stream.test_consumer import SNAPSHOT_EVERY, SPEC


def main(bootstrap: str, topic: str, snapshot_dir: str) -> None:
    state = UserStateStore(SPEC, topic=topic)
    consumer = EventConsumer(
        bootstrap,
        state,
        SnapshotStore(snapshot_dir),
        snapshot_every_events=SNAPSHOT_EVERY,
        poll_max_records=50,
    )
    consumer.open()
    while True:
        consumer.poll_once()
        print(consumer.metrics().applied, flush=True)
        time.sleep(0.01)  # slow enough that the kill lands mid-stream


if __name__ == "__main__":
    main(*sys.argv[1:4])
