"""The contracts of raymm's Kafka topics, and the one decoder every consumer runs on every message.

* ``raymm.events``: key = ``user_id`` (UTF-8), value = JSON ``{"event_id", "user_id", "item_id",
  "event", "ts"}`` (:class:`UserEvent`); ``ts`` is epoch milliseconds or an ISO-8601 time with a
  zone. Unknown fields are ignored, so producers may add their own.
* ``raymm.items``: key = ``item_id``, value = JSON :class:`ItemMessage`: a new or updated item
  with its text, an image and audio (each a URI or inline base64) and tags, as in the items
  contract. Serving encodes it with the artifact's encoders and adds it to the index.
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
from typing import Any, Literal, NamedTuple, TypeVar, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raymm.data.schema import EVENT_KINDS

EVENTS_TOPIC = "raymm.events"
ITEMS_TOPIC = "raymm.items"
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
    "no_content",
    "misrouted",
]
#: Why a message went to the dead-letter topic.
REASONS: tuple[str, ...] = get_args(Reason)
MAX_ID_LENGTH = 256
#: The key of a message is its id in UTF-8: at most 4 bytes a character.
MAX_KEY_BYTES = 4 * MAX_ID_LENGTH
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_Model = TypeVar("_Model", bound=BaseModel)


class EventLimits(BaseModel):
    """What a consumer accepts: key and value sizes in bytes, and the timestamp window (events
    before ``earliest`` or more than ``max_future_s`` seconds ahead of the consumer's clock)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Room for the longest valid id (MAX_ID_LENGTH characters of up to 4 UTF-8 bytes each): a
    #: smaller default refused keys that raymm's own producer writes for valid ids.
    max_key_bytes: int = Field(MAX_KEY_BYTES, gt=0)
    #: The largest event (its JSON value) a consumer accepts, in bytes; a larger one goes to the
    #: dead-letter topic as ``oversized_value``.
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
    def _timestamp(cls, value: Any) -> Any:
        return _utc(value)

    def encode(self) -> tuple[bytes, bytes]:
        """(key, value) as they go on the topic: the user id, and the JSON with ``ts`` in epoch ms."""
        document = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event": self.event,
            "ts": _epoch_ms(self.ts),
        }
        return self.user_id.encode(), json.dumps(document, separators=(",", ":")).encode()


# Not frozen: Python sets an exception's __traceback__ as it passes through a with block of a
# @contextmanager, and a frozen dataclass turned that into FrozenInstanceError. eq=False keeps
# exceptions compared and hashed by identity.
@dataclass(eq=False)
class Rejected(Exception):
    """A message the decoder refused: ``reason`` one of :data:`REASONS`, ``detail`` for people."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _utc(value: Any) -> Any:
    """A time with a zone, in UTC, from epoch milliseconds or ISO-8601 text (None passes)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("the time has no time zone")
        return _in_utc(value)
    if isinstance(value, bool):
        raise ValueError("a time is epoch milliseconds or ISO-8601 text, not a boolean")
    if isinstance(value, int):
        try:  # integer arithmetic: value / 1000 as a float can land a microsecond off the millisecond
            return _EPOCH + dt.timedelta(milliseconds=value)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"epoch milliseconds {value} are not a time ({exc})") from None
    if isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(f"time {value!r} has no time zone")
        return _in_utc(parsed)
    raise ValueError(f"a time is epoch milliseconds or ISO-8601 text, got {type(value).__name__}")


def _in_utc(value: dt.datetime) -> dt.datetime:
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # pydantic passes on only ValueError as a validation error
        raise ValueError(f"time {value.isoformat()} lies outside the years 1..9999 in UTC") from None


def _json_object(
    key: bytes | None, value: bytes | None, max_key_bytes: int, max_value_bytes: int
) -> tuple[dict[str, Any], str | None]:
    """The message's value as a JSON object and its key as text; :class:`Rejected` if not."""
    if key is not None and len(key) > max_key_bytes:
        raise Rejected("oversized_key", f"key of {len(key)} bytes, the limit is {max_key_bytes}")
    if value is None:
        raise Rejected("missing_field", "the message has no value (a tombstone)")
    if len(value) > max_value_bytes:
        raise Rejected("oversized_value", f"value of {len(value)} bytes, the limit is {max_value_bytes}")
    try:
        text = value.decode("utf-8")
        key_text = key.decode("utf-8") if key is not None else None
    except UnicodeDecodeError as exc:
        raise Rejected("undecodable", f"not UTF-8: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise Rejected("bad_json", str(exc)) from None
    except RecursionError:
        raise Rejected("bad_json", "nested too deeply") from None
    if not isinstance(document, dict):
        raise Rejected("not_an_object", f"expected a JSON object, got {type(document).__name__}")
    return document, key_text


def _validated(model: type[_Model], document: dict[str, Any]) -> _Model:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(value)"
        reason: Reason = "missing_field" if first["type"] == "missing" else "wrong_type"
        raise Rejected(reason, f"{field}: {first['msg']}") from None


def decode_event(
    key: bytes | None, value: bytes | None, limits: EventLimits, now: dt.datetime | None = None
) -> UserEvent:
    """The :class:`UserEvent` in a ``raymm.events`` message; :class:`Rejected` naming why not.

    ``now`` is the consumer's clock for the future bound (default: the current UTC time).
    """
    event: UserEvent | None = None
    key_text: str | None = None
    # The fast path: pydantic parses and validates the bytes in one go. Anything it refuses takes
    # the slow path below, which finds the reason to report.
    if (
        value is not None
        and len(value) <= limits.max_value_bytes
        and (key is None or len(key) <= limits.max_key_bytes)
    ):
        try:
            event = UserEvent.model_validate_json(value)
            key_text = key.decode("utf-8") if key is not None else None
        except (ValidationError, UnicodeDecodeError):
            event = None
    if event is None:
        document, key_text = _json_object(key, value, limits.max_key_bytes, limits.max_value_bytes)
        event = _validated(UserEvent, document)
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


class Event(NamedTuple):
    """A decoded, valid event as state applies it: plain values, ``ts`` in epoch milliseconds.

    :class:`UserEvent` is the contract; this is its hot-path form (a pydantic object per message
    would cost as much as the JSON parse).
    """

    event_id: str
    user_id: str
    item_id: str
    event: str
    ts_ms: int

    @classmethod
    def of(cls, event: UserEvent) -> Event:
        """The plain form of a validated :class:`UserEvent`."""
        return cls(event.event_id, event.user_id, event.item_id, event.event, _epoch_ms(event.ts))


def _epoch_ms(ts: dt.datetime) -> int:
    """Epoch milliseconds, rounded down, in integer arithmetic (``int(ts.timestamp() * 1000)``, a
    float product, lands one millisecond short about once in 140 times)."""
    return (ts - _EPOCH) // _MS


_KINDS = frozenset(EVENT_KINDS)


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (it does unless it holds a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class EventDecoder:
    """:func:`decode_event` for a stream of messages, with the time window fixed per :meth:`window`.

    The common case (UTF-8 JSON object, string ids of 1..256 characters, a known event kind, ``ts``
    in epoch milliseconds inside the window, the key equal to the user id) is checked with plain
    type tests and returns an :class:`Event` without building a pydantic object. Anything else
    goes through :func:`decode_event`, which accepts exactly the same messages and names the reason
    for the rest, so both paths agree (a test checks it on every kind of poison message).
    """

    def __init__(self, limits: EventLimits, now: dt.datetime | None = None) -> None:
        self.limits = limits
        self.window(now)

    def window(self, now: dt.datetime | None = None) -> None:
        """Fix the accepted ``ts`` range at ``now`` (default: the current UTC time)."""
        self.now = now or dt.datetime.now(dt.UTC)
        # Rounded up: an earliest bound inside a millisecond must not let that millisecond in.
        self._earliest_ms = -((_EPOCH - self.limits.earliest) // _MS)
        self._latest_ms = _epoch_ms(self.now + dt.timedelta(seconds=self.limits.max_future_s))

    def __call__(self, key: bytes | None, value: bytes | None) -> Event:
        """The message's :class:`Event`; :class:`Rejected` naming why not."""
        limits = self.limits
        if (
            value is not None
            and len(value) <= limits.max_value_bytes
            and (key is None or len(key) <= limits.max_key_bytes)
        ):
            try:
                # orjson refuses what it would read differently from json (NaN, a lone surrogate,
                # deep nesting) and reads integers past 64 bits as floats, which the checks below
                # refuse: all of that goes to decode_event, which decides by json.
                document = orjson.loads(value)
            except orjson.JSONDecodeError:
                document = None
            if type(document) is dict:
                event_id = document.get("event_id")
                user_id = document.get("user_id")
                item_id = document.get("item_id")
                kind = document.get("event")
                ts = document.get("ts")
                if (
                    type(event_id) is str
                    and type(user_id) is str
                    and type(item_id) is str
                    and type(kind) is str
                    and type(ts) is int
                    and 0 < len(event_id) <= MAX_ID_LENGTH
                    and 0 < len(user_id) <= MAX_ID_LENGTH
                    and 0 < len(item_id) <= MAX_ID_LENGTH
                    # A "\ud800" escape decodes to a lone surrogate, which is not text: pydantic
                    # refuses it, and it cannot be encoded back.
                    and (event_id.isascii() or _utf8(event_id))
                    and (user_id.isascii() or _utf8(user_id))
                    and (item_id.isascii() or _utf8(item_id))
                    and kind in _KINDS
                    and self._earliest_ms <= ts <= self._latest_ms
                    and (key is None or key == user_id.encode("utf-8"))
                ):
                    return Event(event_id, user_id, item_id, kind, ts)
        return Event.of(decode_event(key, value, limits, self.now))


class ItemLimits(BaseModel):
    """What an item consumer accepts: key and value sizes in bytes (inline media makes values big)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_key_bytes: int = Field(MAX_KEY_BYTES, gt=0)  # as EventLimits': the longest valid id fits
    max_value_bytes: int = Field(16 * 1024 * 1024, gt=0)


class Media(BaseModel):
    """An image or a clip: a ``uri`` (any pyarrow filesystem or local path) or inline ``base64``."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    uri: str | None = Field(None, min_length=1)
    base64: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> Media:
        if (self.uri is None) == (self.base64 is None):
            raise ValueError("give exactly one of uri and base64")
        return self

    def content(self) -> str | bytes:
        """The URI as a string, or the decoded bytes; ``ValueError`` for base64 that is not."""
        if self.uri is not None:
            return self.uri
        assert self.base64 is not None
        return base64.b64decode(self.base64, validate=True)


class ItemMessage(BaseModel):
    """A new or updated item on ``raymm.items``; the items contract of design.md, one row.

    A missing modality is null (or absent), never an empty placeholder; an item needs at least one.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    text: str | None = Field(None, min_length=1)
    image: Media | None = None
    audio: Media | None = None
    tags: list[str] | None = None
    created_at: dt.datetime | None = None

    @field_validator("created_at", mode="before")
    @classmethod
    def _created(cls, value: Any) -> Any:
        return _utc(value)

    def encode(self) -> tuple[bytes, bytes]:
        """(key, value) as they go on the topic: the item id, and the JSON without null fields."""
        return self.item_id.encode(), self.model_dump_json(exclude_none=True).encode()


def decode_item(key: bytes | None, value: bytes | None, limits: ItemLimits) -> ItemMessage:
    """The :class:`ItemMessage` in a ``raymm.items`` message; :class:`Rejected` naming why not.

    Base64 media that does not decode are ``wrong_type``; an item with no text, image or audio
    is ``no_content``; a key other than the item id is ``key_mismatch``.
    """
    document, key_text = _json_object(key, value, limits.max_key_bytes, limits.max_value_bytes)
    item = _validated(ItemMessage, document)
    if item.text is None and item.image is None and item.audio is None:
        raise Rejected("no_content", f"item {item.item_id!r} has none of text, image, audio")
    for name in ("image", "audio"):
        media = getattr(item, name)
        if media is not None and media.base64 is not None:
            try:
                base64.b64decode(media.base64, validate=True)
            except ValueError as exc:
                raise Rejected("wrong_type", f"{name}.base64 is not base64: {exc}") from None
    if key_text is not None and key_text != item.item_id:
        raise Rejected("key_mismatch", f"key {key_text!r} is not the item's item_id {item.item_id!r}")
    return item


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

    def key(self) -> bytes:
        """Where the refused message was: ``topic:partition:offset``, one key per message, so the
        copies sent again by a replay or by a second cluster collapse on a compacted topic."""
        return f"{self.topic}:{self.partition}:{self.offset}".encode()

    def encode(self) -> tuple[bytes, bytes]:
        """(key, value) for the dead-letter topic: :meth:`key`, and this record as JSON (the
        original key and value are inside, base64)."""
        return self.key(), self.model_dump_json().encode()
