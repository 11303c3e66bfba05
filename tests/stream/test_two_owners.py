"""Two owners of every partition at once, as during a KubeRay NewCluster upgrade or a Serve code
roll-out, against real brokers (Tansu and noida).

Two consumers each own every partition and snapshot to the same location; events arrive by every
route, so both forward the same misrouted events. One owner is killed mid-stream and restarted
from whatever snapshot is newest (its own or the other's). Both end in the state of one clean
pass, and in the same whole state as each other (offsets included: the state is a deterministic
fold of the log); every snapshot left decodes, and a restore picks the newest.
"""

from __future__ import annotations

from pathlib import Path

from raymm.data import io
from raymm.stream.broker import EmbeddedBroker
from raymm.stream.snapshot import SnapshotStore, decode_snapshot
from tests.stream.test_consumer import PARTITIONS, _consumer, _events, _oracle, _topic
from tests.stream.test_forwarding import _records, _send, _settle, _views


def test_two_owners_with_a_kill_between_both_end_in_the_clean_pass_state(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = _topic(broker)
    events = _events(1200, seed=21)
    _send(broker.bootstrap_servers, topic, events[:600])
    store = SnapshotStore(str(tmp_path / "snapshots"))
    often = {"snapshot_every_events": 40}  # many saves and prunes by both owners, interleaved
    first = _consumer(broker, topic, store, **often).open()
    second = _consumer(broker, topic, store, **often).open()
    try:
        _settle(first, second)
        written_by_first = first.metrics().snapshots
        first.abort()  # killed: no final snapshot
        _send(broker.bootstrap_servers, topic, events[600:])
        restarted = _consumer(broker, topic, store, **often).open()  # the newest snapshot, whoever wrote it
        try:
            _settle(restarted, second)
            assert restarted.state.export() == second.state.export()
            assert _records(restarted) == _records(second) == _views(_oracle(events))
            owners = (restarted, second)
            # Both forwarded every misrouted event; each owner applied each forward once.
            assert all(owner.metrics().forwarded > 0 for owner in owners)
            assert all(owner.metrics().forwarded_again > 0 for owner in owners)
            assert all(owner.metrics().snapshot_failures == 0 for owner in owners)
            assert written_by_first > 0 and second.metrics().snapshots > 0
        finally:
            restarted.close()
        ends = dict(second.state.offsets())
    finally:
        second.close()

    for partition in range(PARTITIONS):
        uris = store.list(topic, partition)
        assert 1 <= len(uris) <= store.keep + 1  # pruned, but never to nothing
        snapshots = [decode_snapshot(io.read_bytes(uri), uri) for uri in uris]  # none torn
        restored = store.restore(topic, partition)
        assert restored.uri == uris[0] and restored.skipped == ()
        assert restored.snapshot is not None and restored.snapshot.applied_offset == ends[partition]
        assert restored.snapshot.applied_offset == max(s.applied_offset for s in snapshots)

    clean = _consumer(broker, topic, None).open()
    try:
        _settle(clean)
        assert _records(clean) == _views(_oracle(events))
    finally:
        clean.close()


def test_two_owners_never_overwrite_each_others_snapshots(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path), keep=4)
    first = store.save(b"one", "raymm.events", 0, 41)
    second = store.save(b"two", "raymm.events", 0, 41)  # the same partition and offset, at once
    assert first != second
    assert {io.read_bytes(first), io.read_bytes(second)} == {b"one", b"two"}
