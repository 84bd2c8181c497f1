"""The payload parser every side shares: valid events parse, anything else is a ProtocolError."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.protocol import (
    AlarmEvent,
    CancelEvent,
    ProtocolError,
    Reason,
    canonical_json,
    parse_event,
)
from devices.topics import PanelTopic, parse_panel_topic


def test_a_valid_alarm_parses():
    event = parse_event(b'{"type": "alarm", "seq": 3, "ts": 1700000000000, "kind": "fire"}')
    assert isinstance(event, AlarmEvent)
    assert (event.seq, event.kind.value) == (3, "fire")


def test_unknown_keys_are_ignored_for_newer_firmware():
    event = parse_event(
        b'{"type": "cancel", "seq": 1, "ts": 5, "alarm_id": "a-1", "pin": "0042", "zone": 3}'
    )
    assert isinstance(event, CancelEvent) and event.pin == "0042"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", Reason.INVALID_JSON),
        (b"{", Reason.INVALID_JSON),
        (b'"alarm"', Reason.NOT_OBJECT),
        (b'{"seq": 1, "ts": 1}', Reason.MISSING_FIELD),
        (b'{"type": "alarm", "seq": true, "ts": 1, "kind": "fire"}', Reason.INVALID_FIELD),
        (b'{"type": "alarm", "seq": -1, "ts": 1, "kind": "fire"}', Reason.INVALID_FIELD),
        (b'{"type": "alarm", "seq": 1, "ts": 1, "kind": "FIRE"}', Reason.UNKNOWN_KIND),
        (
            b'{"type": "cancel", "seq": 1, "ts": 1, "alarm_id": "a-1", "pin": 1234}',
            Reason.INVALID_FIELD,
        ),
        (b'{"type": "ack", "seq": 1, "ts": 1, "alarm_id": "../../etc"}', Reason.INVALID_FIELD),
        (b"[" * 100_000, Reason.TOO_LARGE),
    ],
)
def test_refusals_name_their_reason(payload, reason):
    with pytest.raises(ProtocolError) as caught:
        parse_event(payload)
    assert caught.value.reason == reason
    assert caught.value.error.startswith(reason.value + ": ")


def test_deep_nesting_within_the_size_limit_is_refused_not_a_crash():
    with pytest.raises(ProtocolError) as caught:
        parse_event(b"[" * 4000, max_bytes=10_000)
    assert caught.value.reason == Reason.INVALID_JSON


def test_the_seq_of_a_refused_event_is_kept_when_it_can_be_read():
    with pytest.raises(ProtocolError) as caught:
        parse_event(b'{"type": "alarm", "seq": 12, "ts": 1, "kind": "ufo"}')
    assert caught.value.seq == 12


def test_canonical_json_ignores_key_order_and_spacing():
    assert canonical_json(json.loads('{"b": 1, "a": [1, 2]}')) == canonical_json(
        json.loads('{ "a":[1,2],"b":1 }')
    )


def test_panel_topics_parse_only_when_well_formed():
    assert parse_panel_topic("tenhub/v1/panel/p-1/event") == PanelTopic("p-1", "event")
    for bad in [
        "tenhub/v1/panel/P-1/event",
        "tenhub/v1/panel/p-1/event/x",
        "tenhub/v2/panel/p-1/event",
        "tenhub/v1/panel//event",
        "x" * 70000,
    ]:
        assert parse_panel_topic(bad) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["alarm", "cancel", "ack", "test", "tamper", "trouble", "x"])
        | json_values,
        "seq": st.integers(min_value=-5, max_value=2**60) | json_values,
        "ts": st.integers(min_value=-5, max_value=2**60) | json_values,
        "kind": st.sampled_from(["panic", "burglary", "fire", "medical", "gas"]) | json_values,
        "alarm_id": st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True) | json_values,
        "pin": st.from_regex(r"[0-9]{4,8}", fullmatch=True) | json_values,
        "condition": json_values,
        "detail": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_no_bytes_make_the_parser_raise_anything_but_its_own_error(payload):
    with contextlib.suppress(ProtocolError):
        parse_event(payload)


EVENT_TYPES = {"alarm", "cancel", "ack", "test", "tamper", "trouble"}


def _strict_json(obj: dict) -> bool:
    try:
        json.dumps(obj, allow_nan=False)
    except ValueError:
        return False
    return True


def _readable_seq(obj: dict):
    seq = obj.get("seq")
    ok = isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= 2**53
    return seq if ok else None


@settings(max_examples=700, deadline=None)
@given(event_like)
def test_event_shaped_objects_either_parse_or_are_refused_with_a_reason(obj):
    payload = json.dumps(obj).encode()
    try:
        event = parse_event(payload)
    except ProtocolError as exc:
        # The reason is the object's first fault, in the order a panel's author needs them.
        if not _strict_json(obj):  # an infinity: JSON has no such number
            assert exc.reason == Reason.INVALID_JSON
        elif "type" not in obj:
            assert exc.reason == Reason.MISSING_FIELD and "'type'" in exc.detail
        elif not (isinstance(obj["type"], str) and obj["type"] in EVENT_TYPES):
            assert exc.reason == Reason.UNKNOWN_TYPE
        elif "seq" not in obj:
            assert exc.reason == Reason.MISSING_SEQ
        elif exc.reason == Reason.MISSING_FIELD:
            assert exc.detail.split("'")[1] not in obj, "a field it has is not missing"
        elif exc.reason == Reason.UNKNOWN_KIND:
            assert obj["type"] == "alarm" and "kind" in obj
        else:
            assert exc.reason == Reason.INVALID_FIELD, exc.error
            assert exc.detail.split("'")[1].split(".")[0] in obj, "it names one of its fields"
        assert exc.error == f"{exc.reason.value}: {exc.detail}"
        readable = _readable_seq(obj) if _strict_json(obj) else None
        assert exc.seq == readable, "the seq is kept when it can be read"
    else:
        assert event.type.value == obj["type"]
        assert event.seq == obj["seq"] and isinstance(obj["seq"], int)
