"""Hostile bytes against the stream's decoders (hypothesis): the fast :class:`EventDecoder` and
:func:`decode_event` accept and refuse exactly the same messages and give the same event, neither
raises anything but :class:`Rejected`, and the items decoder does the same for ``raymm.items``.

The ``@example`` rows are the messages these tests found, each fixed in ``raymm/stream/events.py``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from raymm.data.schema import EVENT_KINDS
from raymm.stream.events import (
    MAX_ID_LENGTH,
    REASONS,
    Event,
    EventDecoder,
    EventLimits,
    ItemLimits,
    ItemMessage,
    Media,
    Rejected,
    UserEvent,
    decode_event,
    decode_item,
)

# The consumer's clock, and the earliest time, with microseconds: the window's edges fall inside a
# millisecond, where rounding one way or the other lets one millisecond in or keeps it out.
NOW = dt.datetime(2026, 6, 1, 12, 0, 0, 123_456, tzinfo=dt.UTC)
EARLIEST = dt.datetime(2000, 1, 1, 0, 0, 0, 500, tzinfo=dt.UTC)
LIMITS = EventLimits(max_key_bytes=64, max_value_bytes=2048, earliest=EARLIEST, max_future_s=60.0)
EARLIEST_MS = 946_684_800_001  # the first millisecond not before EARLIEST
LATEST_MS = 1_780_315_260_123  # NOW + 60 s, in whole milliseconds
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event": "view", "ts": 1_780_000_000_000}


def _outcome(decode: Any, key: bytes | None, value: bytes | None) -> Event | str:
    """The decoded :class:`Event`, or the reason it was refused; any other exception fails the test."""
    try:
        return decode(key, value)
    except Rejected as refused:
        assert refused.reason in REASONS and refused.detail
        return refused.reason


def _assert_the_decoders_agree(key: bytes | None, value: bytes | None) -> None:
    fast = EventDecoder(LIMITS, NOW)
    expected = _outcome(lambda k, v: Event.of(decode_event(k, v, LIMITS, NOW)), key, value)
    assert _outcome(fast, key, value) == expected, (key, value)


def _value(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def _with_literal(field: str, literal: str) -> bytes:
    """:data:`GOOD` with ``field`` set to ``literal``, JSON text that Python's json may not write."""
    return json.dumps({**GOOD, field: "@"}).replace('"@"', literal).encode()


@settings(max_examples=400, deadline=None)
@given(key=st.none() | st.binary(max_size=80), value=st.none() | st.binary(max_size=300))
def test_the_decoders_agree_on_arbitrary_bytes(key: bytes | None, value: bytes | None) -> None:
    _assert_the_decoders_agree(key, value)


def test_a_refusal_passes_through_a_context_manager_as_itself() -> None:
    @contextlib.contextmanager
    def block() -> Iterator[None]:
        yield

    # A frozen dataclass refused the __traceback__ that contextlib sets: FrozenInstanceError instead.
    with pytest.raises(Rejected, match="bad_json"), block():
        decode_event(b"u1", b"{", LIMITS, NOW)


_SURROGATES = st.sampled_from(["\ud800", "a\udfff", "\udc00\ud800"])
_IDS = st.text(min_size=1, max_size=8) | st.sampled_from(["", "x" * MAX_ID_LENGTH, "x" * (MAX_ID_LENGTH + 1)])
_TIMES = st.integers(EARLIEST_MS - 2, EARLIEST_MS + 1) | st.integers(LATEST_MS - 1, LATEST_MS + 2)
_HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**30), 10**30),
    st.floats(),  # NaN and +-Infinity included: json.dumps writes them as bare words
    st.text(max_size=8),
    _SURROGATES,
    st.sampled_from([*EVENT_KINDS, "VIEW", " view", "2026-06-01T12:00:00+00:00", "2026-06-01T12:00:00"]),
    st.sampled_from(["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "1e3", "1780000000000"]),
    _TIMES,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_FIELDS = st.sampled_from([*GOOD, "extra", "ts_ms", ""])


@st.composite
def _near_valid(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    """A valid event, then a few of: a field changed to a hostile value or removed, an extra key,
    a duplicated key, a huge number, deep nesting, NaN, a byte-order mark, truncation."""
    document: dict[str, Any] = {
        "event_id": draw(_IDS),
        "user_id": draw(_IDS),
        "item_id": draw(_IDS),
        "event": draw(st.sampled_from(EVENT_KINDS)),
        "ts": draw(_TIMES | st.integers(EARLIEST_MS, LATEST_MS)),
    }
    for _ in range(draw(st.integers(0, 3))):
        field = draw(_FIELDS)
        if draw(st.booleans()):
            document[field] = draw(_HOSTILE)
        else:
            document.pop(field, None)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    body = text[1:-1] if len(text) > 2 else ""
    for _ in range(draw(st.integers(0, 2))):
        field = draw(_FIELDS)
        literal = draw(
            st.sampled_from(["NaN", "-Infinity", "9" * 5000, "1e999", "-0", '"\\ud800"', '"\\u0000"'])
            | st.builds(lambda depth: "[" * depth + "]" * depth, st.integers(1, 3000))
            | _HOSTILE.map(json.dumps)
        )
        pair = f"{json.dumps(field)}: {literal}"  # a duplicate key when the field is already there
        body = f"{pair}, {body}" if draw(st.booleans()) and body else f"{body}, {pair}" if body else pair
    raw = ("{" + body + "}").encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        raw = draw(st.sampled_from([b"\xef\xbb\xbf", b" \n", b"", b"\x00"])) + raw
    if draw(st.integers(0, 9)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    user_id = document.get("user_id")
    key = draw(
        st.none()
        | st.just(user_id.encode("utf-8", "surrogatepass") if isinstance(user_id, str) else b"u1")
        | st.binary(max_size=8)
        | st.just(b"u" * 65)
    )
    return key, raw


@settings(max_examples=500, deadline=None)
@given(message=_near_valid())
@example(message=(b"u1", _value(event=[])))  # an unhashable kind: the fast path raised TypeError
@example(message=(b"u1", _with_literal("extra", "9" * 5000)))  # over json.loads' 4300 digits: ValueError
@example(message=(b"u1", _with_literal("ts", "9" * 5000)))
@example(
    message=(b"u1", b'{"event_id":"e1","user_id":"\\ud800","item_id":"i1","event":"view","ts":1780000000000}')
)
@example(
    message=(None, b'{"event_id":"e1","user_id":"\\ud800","item_id":"i1","event":"view","ts":1780000000000}')
)
@example(message=(b"u1", _value(ts=1_081_952_190_235)))  # the fast path's ms was one more than Event.of's
@example(message=(b"u1", _value(ts=EARLIEST_MS - 1)))  # earlier than EARLIEST by 0.5 ms
@example(message=(b"u1", _value(ts="0001-01-01T00:00:00+05:00")))  # before year 1 in UTC: OverflowError
def test_the_decoders_agree_on_near_valid_events(message: tuple[bytes | None, bytes]) -> None:
    _assert_the_decoders_agree(*message)


_TEXT_IDS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_ID_LENGTH)


@settings(max_examples=200, deadline=None)
@given(
    event_id=_TEXT_IDS,
    user_id=_TEXT_IDS,
    item_id=_TEXT_IDS,
    kind=st.sampled_from(EVENT_KINDS),
    ts_ms=st.integers(EARLIEST_MS, LATEST_MS),
)
@example(event_id="e", user_id="u", item_id="i", kind="view", ts_ms=1_081_952_190_235)
def test_a_valid_event_round_trips_through_both_decoders_to_the_millisecond(
    event_id: str, user_id: str, item_id: str, kind: str, ts_ms: int
) -> None:
    ts = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ts_ms)
    event = UserEvent(event_id=event_id, user_id=user_id, item_id=item_id, event=kind, ts=ts)
    key, value = event.encode()
    assert json.loads(value)["ts"] == ts_ms
    # The default limits: every valid id's key fits (ids of 256 characters of 4 UTF-8 bytes each).
    limits = EventLimits(earliest=LIMITS.earliest, max_future_s=LIMITS.max_future_s)
    assert decode_event(key, value, limits, NOW) == event
    expected = Event(event_id, user_id, item_id, kind, ts_ms)
    assert Event.of(event) == expected
    assert EventDecoder(limits, NOW)(key, value) == expected


ITEM_LIMITS = ItemLimits(max_key_bytes=64, max_value_bytes=4096)


def _decode_item(key: bytes | None, value: bytes | None) -> ItemMessage | str:
    try:
        return decode_item(key, value, ITEM_LIMITS)
    except Rejected as refused:
        assert refused.reason in REASONS and refused.detail
        return refused.reason


@settings(max_examples=300, deadline=None)
@given(key=st.none() | st.binary(max_size=80), value=st.none() | st.binary(max_size=300))
def test_the_items_decoder_refuses_arbitrary_bytes_only_with_rejected(
    key: bytes | None, value: bytes | None
) -> None:
    _decode_item(key, value)


_MEDIA = st.one_of(
    _HOSTILE,
    st.fixed_dictionaries(
        {}, optional={"uri": _HOSTILE, "base64": _HOSTILE | st.sampled_from(["QUJD", "QUJ", "*"])}
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    document=st.fixed_dictionaries(
        {"item_id": _IDS | _HOSTILE},
        optional={
            "text": _HOSTILE,
            "image": _MEDIA,
            "audio": _MEDIA,
            "tags": _HOSTILE | st.lists(_HOSTILE, max_size=3),
            "created_at": _HOSTILE,
            "extra": _HOSTILE,
        },
    ),
    key=st.none() | st.just(b"it1") | st.binary(max_size=8),
)
@example(document={"item_id": "it1", "text": "t", "created_at": "0001-01-01T00:00:00+05:00"}, key=None)
@example(document={"item_id": "it1", "text": "t", "created_at": [[[[]]]]}, key=None)
def test_the_items_decoder_refuses_near_valid_items_only_with_rejected(
    document: dict[str, Any], key: bytes | None
) -> None:
    value = json.dumps(document).encode()
    outcome = _decode_item(key, value)
    if isinstance(outcome, ItemMessage):  # what it accepts, it accepts on the contract's terms
        assert outcome.text or outcome.image or outcome.audio
        assert key is None or key == outcome.item_id.encode()


_MEDIA_VALUES = st.builds(Media, uri=_TEXT_IDS) | st.builds(
    lambda data: Media(base64=base64.b64encode(data).decode()), st.binary(min_size=1, max_size=64)
)


@settings(max_examples=200, deadline=None)
@given(
    item_id=_TEXT_IDS,
    text=st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
    image=st.none() | _MEDIA_VALUES,
    audio=st.none() | _MEDIA_VALUES,
    tags=st.none() | st.lists(st.text(st.characters(codec="utf-8"), max_size=10), max_size=4),
    created_at=st.none() | st.datetimes(timezones=st.just(dt.UTC)),
)
def test_a_valid_item_round_trips(
    item_id: str,
    text: str | None,
    image: Media | None,
    audio: Media | None,
    tags: list[str] | None,
    created_at: dt.datetime | None,
) -> None:
    item = ItemMessage(item_id=item_id, text=text, image=image, audio=audio, tags=tags, created_at=created_at)
    key, value = item.encode()
    if text is None and image is None and audio is None:
        with pytest.raises(Rejected) as refused:  # the default limits: every valid id's key fits
            decode_item(key, value, ItemLimits())
        assert refused.value.reason == "no_content"
        return
    decoded = decode_item(key, value, ItemLimits())
    assert decoded == item
    for sent, received in ((image, decoded.image), (audio, decoded.audio)):
        assert (sent is None) == (received is None)
        if sent is not None and received is not None:
            assert received.content() == sent.content()
