"""The ``raymm.events`` contract: good events decode, every malformed kind is refused with its reason,
and a dead letter keeps the original bytes."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from raymm.stream.events import REASONS, DeadLetter, EventLimits, Rejected, UserEvent, decode_event

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LIMITS = EventLimits(max_key_bytes=64, max_value_bytes=512)
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i9", "event": "click", "ts": 1_764_590_400_000}


def _value(**changes: object) -> bytes:
    document = {**GOOD, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def test_a_good_event_decodes_and_round_trips() -> None:
    event = decode_event(b"u1", _value(extra={"ignored": True}), LIMITS, NOW)  # unknown fields ignored
    assert event == UserEvent(
        event_id="e1",
        user_id="u1",
        item_id="i9",
        event="click",
        ts=dt.datetime(2025, 12, 1, 12, 0, tzinfo=dt.UTC),
    )
    key, value = event.encode()
    assert decode_event(key, value, LIMITS, NOW) == event
    iso = decode_event(b"u1", _value(ts="2025-12-01T13:00:00+01:00"), LIMITS, NOW)
    assert iso.ts == event.ts


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"u" * 65, _value(), "oversized_key"),
        (b"u1", _value(item_id="i" * 600), "oversized_value"),
        (b"u1", b"\xff\xfe{", "undecodable"),
        (b"u1", b'{"event_id": "e1",', "bad_json"),
        (b"u1", b"[1, 2]", "not_an_object"),
        (b"u1", _value(item_id=...), "missing_field"),
        (b"u1", None, "missing_field"),
        (b"u1", _value(item_id=42), "wrong_type"),
        (b"u1", _value(ts=True), "wrong_type"),
        (b"u1", _value(ts="2025-12-01T12:00:00"), "wrong_type"),  # no time zone
        (b"u1", _value(event="teleport"), "unknown_event"),
        (b"u1", _value(ts=0), "ts_out_of_range"),
        (b"u1", _value(ts="2027-01-01T00:00:00+00:00"), "ts_out_of_range"),
        (b"u2", _value(), "key_mismatch"),
    ],
)
def test_every_malformed_kind_is_refused_with_its_reason(
    key: bytes, value: bytes | None, reason: str
) -> None:
    with pytest.raises(Rejected) as refused:
        decode_event(key, value, LIMITS, NOW)
    assert refused.value.reason == reason and refused.value.reason in REASONS and refused.value.detail


def test_a_dead_letter_keeps_the_original_bytes_and_says_where_and_why() -> None:
    key, value = b"u1", b"\xff not json"
    with pytest.raises(Rejected) as refused:
        decode_event(key, value, LIMITS, NOW)
    letter = DeadLetter.of(refused.value, key, value, "raymm.events", partition=3, offset=41)
    dlq_key, dlq_value = letter.encode()
    assert dlq_key == b"raymm.events:3:41"  # one key per source message: copies collapse when compacted
    back = DeadLetter.model_validate_json(dlq_value)
    assert back.original() == (key, value)
    assert (back.reason, back.topic, back.partition, back.offset) == ("undecodable", "raymm.events", 3, 41)
