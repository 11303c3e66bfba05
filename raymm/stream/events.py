"""The contracts of raymm's Kafka topics, and the one decoder every consumer runs on every message.

* ``raymm.events``: key = ``user_id`` (UTF-8), value = JSON ``{"event_id", "user_id", "item_id",
  "event", "ts"}`` (:class:`UserEvent`); ``ts`` is epoch milliseconds or an ISO-8601 time with a
  zone. Unknown fields are ignored, so producers may add their own.
* ``raymm.events.dlq``: every message the decoder refuses, as :class:`DeadLetter`: the original
  key and value bytes (base64), the reason code and its detail, and the source topic, partition
  and offset. The stream never stops for a bad message.

:func:`decode_event` checks, in order: key and value sizes, UTF-8, JSON, an object, the fields and
their types, the event kind, the timestamp window, and that the key is the event's user (Kafka's
default partitioner hashes the key, and serving routes a user to the owner of that partition).
Each refusal is a :class:`Rejected` with one of :data:`REASONS`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raymm.data.schema import EVENT_KINDS

EVENTS_TOPIC = "raymm.events"
DEAD_LETTER_TOPIC = "raymm.events.dlq"

Reason = Literal[
    "oversized_key",
    "oversized_value",
    "undecodable",
    "bad_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_event",
    "ts_out_of_range",
    "key_mismatch",
]
#: Why a message went to the dead-letter topic.
REASONS: tuple[str, ...] = get_args(Reason)
MAX_ID_LENGTH = 256


class EventLimits(BaseModel):
    """What a consumer accepts: key and value sizes in bytes, and the timestamp window (events
    before ``earliest`` or more than ``max_future_s`` seconds ahead of the consumer's clock)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_key_bytes: int = Field(512, gt=0)
    max_value_bytes: int = Field(16_384, gt=0)
    earliest: dt.datetime = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    max_future_s: float = Field(86_400.0, ge=0)


class UserEvent(BaseModel):
    """One user event on ``raymm.events``; the interactions contract of design.md, one row."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    event_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    event: str
    ts: dt.datetime

    @field_validator("ts", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> dt.datetime:
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise ValueError("ts has no time zone")
            return value.astimezone(dt.UTC)
        if isinstance(value, bool):
            raise ValueError("ts must be epoch milliseconds or an ISO-8601 time, not a boolean")
        if isinstance(value, int):
            return dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise ValueError(f"ts {value!r} has no time zone")
            return parsed.astimezone(dt.UTC)
        raise ValueError(f"ts must be epoch milliseconds or an ISO-8601 time, got {type(value).__name__}")

    def encode(self) -> tuple[bytes, bytes]:
        """(key, value) as they go on the topic: the user id, and the JSON with ``ts`` in epoch ms."""
        document = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event": self.event,
            "ts": int(self.ts.timestamp() * 1000),
        }
        return self.user_id.encode(), json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Rejected(Exception):
    """A message the decoder refused: ``reason`` one of :data:`REASONS`, ``detail`` for people."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def decode_event(
    key: bytes | None, value: bytes | None, limits: EventLimits, now: dt.datetime | None = None
) -> UserEvent:
    """The :class:`UserEvent` in a ``raymm.events`` message; :class:`Rejected` naming why not.

    ``now`` is the consumer's clock for the future bound (default: the current UTC time).
    """
    if key is not None and len(key) > limits.max_key_bytes:
        raise Rejected("oversized_key", f"key of {len(key)} bytes, the limit is {limits.max_key_bytes}")
    if value is None:
        raise Rejected("missing_field", "the message has no value (a tombstone)")
    if len(value) > limits.max_value_bytes:
        raise Rejected(
            "oversized_value", f"value of {len(value)} bytes, the limit is {limits.max_value_bytes}"
        )
    try:
        text = value.decode("utf-8")
        key_text = key.decode("utf-8") if key is not None else None
    except UnicodeDecodeError as exc:
        raise Rejected("undecodable", f"not UTF-8: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected("bad_json", str(exc)) from None
    if not isinstance(document, dict):
        raise Rejected("not_an_object", f"expected a JSON object, got {type(document).__name__}")
    try:
        event = UserEvent.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(value)"
        reason: Reason = "missing_field" if first["type"] == "missing" else "wrong_type"
        raise Rejected(reason, f"{field}: {first['msg']}") from None
    if event.event not in EVENT_KINDS:
        raise Rejected("unknown_event", f"event {event.event!r} is none of {', '.join(EVENT_KINDS)}")
    clock = now or dt.datetime.now(dt.UTC)
    latest = clock + dt.timedelta(seconds=limits.max_future_s)
    if not limits.earliest <= event.ts <= latest:
        raise Rejected(
            "ts_out_of_range",
            f"ts {event.ts.isoformat()} is outside [{limits.earliest.isoformat()}, {latest.isoformat()}]",
        )
    if key_text is not None and key_text != event.user_id:
        raise Rejected("key_mismatch", f"key {key_text!r} is not the event's user_id {event.user_id!r}")
    return event


class DeadLetter(BaseModel):
    """A refused message on ``raymm.events.dlq``: the original bytes and where and why it failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason
    detail: str
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key_b64: str | None
    value_b64: str | None

    @classmethod
    def of(
        cls,
        rejected: Rejected,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
    ) -> DeadLetter:
        """The dead letter of a message refused with ``rejected``."""
        return cls(
            reason=rejected.reason,
            detail=rejected.detail[:1000],
            topic=topic,
            partition=partition,
            offset=offset,
            key_b64=None if key is None else base64.b64encode(key).decode(),
            value_b64=None if value is None else base64.b64encode(value).decode(),
        )

    def original(self) -> tuple[bytes | None, bytes | None]:
        """The refused message's (key, value) bytes, exactly as they arrived."""
        return (
            None if self.key_b64 is None else base64.b64decode(self.key_b64),
            None if self.value_b64 is None else base64.b64decode(self.value_b64),
        )

    def encode(self) -> tuple[bytes | None, bytes]:
        """(key, value) for the dead-letter topic: the original key, and this record as JSON."""
        return self.original()[0], self.model_dump_json().encode()
