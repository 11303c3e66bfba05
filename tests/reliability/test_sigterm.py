"""``raymm serve`` stopped by SIGTERM, as Kubernetes stops a pod: every state shard writes its
final snapshot, covering every event it applied, and the process exits 0.

The command runs in a process of its own that joins the session's Ray (``ray.address``): only its
pid is signalled, and it never stops Ray. Snapshots are taken only at shutdown here (no interval
or count comes due during the test), so every snapshot found is a final one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
import requests
from kafka import KafkaProducer
from ray import serve

from raymm.serve.runner import recommender_handle
from raymm.stream.events import EVENTS_TOPIC, UserEvent
from raymm.stream.snapshot import SnapshotStore
from raymm.stream.state import StateSpec
from tests.conftest import Trained
from tests.fixtures import free_port
from tests.reliability.faults import OwnedNoida, end_offsets, oracle, resumed_users, until
from tests.stream.test_consumer import _events

REPO = Path(__file__).resolve().parents[2]
PARTITIONS, SHARDS = 4, 2
BEFORE, DURING = 600, 1500


def _send(bootstrap: str, events: list[UserEvent], pause_every: int = 0) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for i, event in enumerate(events):
            key, value = event.encode()
            producer.send(EVENTS_TOPIC, key=key, value=value)
            if pause_every and i % pause_every == 0:
                time.sleep(0.01)
        producer.flush()
    finally:
        producer.close()


def test_sigterm_stops_raymm_serve_with_every_shards_final_snapshot_and_exit_0(
    trained: Trained, tmp_path: Path
) -> None:
    broker = OwnedNoida(tmp_path / "noida").start()
    port = free_port()
    config = trained.config.model_copy(deep=True)
    config.out = str(tmp_path)
    config.ray = config.ray.model_copy(update={"address": ray.get_runtime_context().gcs_address})
    config.kafka = config.kafka.model_copy(
        update={"bootstrap_servers": broker.bootstrap_servers, "partitions": PARTITIONS}
    )
    config.stream = config.stream.model_copy(
        update={"snapshot_interval_s": 3600.0, "snapshot_every_events": 1_000_000}
    )
    config.serve = config.serve.model_copy(
        update={"port": port, "state_shards": SHARDS, "state_timeout_s": 5.0}
    )
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    spec = StateSpec.from_artifact(trained.model, config.stream.dedupe_window)
    snapshots = SnapshotStore(str(tmp_path / "state"))
    events = _events(BEFORE + DURING, seed=44)

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raymm.cli",
            "serve",
            "--quiet",
            "--config",
            str(tmp_path / "config.yaml"),
            "--model",
            str(trained.model),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    writer = threading.Thread(
        target=_send, args=(broker.bootstrap_servers, events[BEFORE:]), kwargs={"pause_every": 20}
    )
    try:

        def healthy() -> bool:
            assert process.poll() is None, f"raymm serve exited early:\n{process.communicate()[0]}"
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        until(healthy, 240, "raymm serve answering /healthz with 200")
        _send(broker.bootstrap_servers, events[:BEFORE])
        ends = end_offsets(broker.bootstrap_servers, EVENTS_TOPIC, PARTITIONS)
        recommender = recommender_handle(config.serve.app_name)

        def shards(method: str) -> dict[int, Any]:
            """Every shard's ``method()`` merged; a call that times out on a loaded machine is asked again."""

            def ask() -> dict[int, Any] | None:
                merged: dict[int, Any] = {}
                try:
                    for rank in range(SHARDS):
                        merged.update(recommender.shard_call.remote(rank, method).result(timeout_s=30))
                except TimeoutError:
                    return None
                return merged

            return until(ask, 60, f"the shards answering {method}")

        def applied() -> dict[int, int]:
            return shards("offsets")

        until(lambda: applied() == {p: end - 1 for p, end in ends.items()}, 60, "the shards applying")
        live: dict[str, object] = {}
        for _, users in shards("export").values():
            live.update(users)
        assert live == oracle(events[:BEFORE], spec)
        assert not any(snapshots.list(EVENTS_TOPIC, p) for p in range(PARTITIONS))

        writer.start()  # more events arrive while the pod is told to stop
        time.sleep(0.5)
        seen = applied()
        process.send_signal(signal.SIGTERM)  # this pid only: the session's Ray stays up
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"raymm serve exited {process.returncode}:\n{output[-3000:]}"
        assert ray.cluster_resources().get("CPU"), "the session's Ray went down with raymm serve"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if writer.is_alive() or writer.ident is not None:
            writer.join()
        try:
            serve.delete(config.serve.app_name)
        finally:
            serve.shutdown()  # Serve keeps the HTTP options it was started with: the next test starts its own
    try:
        final = {p: snapshots.restore(EVENTS_TOPIC, p).snapshot for p in range(PARTITIONS)}
        missing = [p for p, snapshot in final.items() if snapshot is None]
        assert not missing, f"no final snapshot of partitions {missing}:\n{output[-3000:]}"
        covered = {p: s.applied_offset for p, s in final.items() if s is not None}
        assert all(covered[p] >= seen[p] for p in range(PARTITIONS)), (covered, seen)
        # The snapshots are the state as applied: resuming from them reaches the oracle, no event
        # lost (a snapshot behind the state) and none applied twice.
        resumed = resumed_users(broker.bootstrap_servers, EVENTS_TOPIC, spec, snapshots.root)
        assert resumed == oracle(events, spec)
    finally:
        broker.stop()
