"""Payloads of wire protocol v1: models, parsing and the reasons a payload is refused.

Every side (hub, reference panel, simulator) builds and reads messages through this
module, so what the hub accepts is exactly what a panel is able to send.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from devices.topics import ID_RE

M = TypeVar("M", bound=BaseModel)

MAX_PAYLOAD_BYTES = 4096
NO_SEQ = -1  # the `seq` of a receipt answering an event whose own seq could not be read


class EventType(StrEnum):
    ALARM = "alarm"
    CANCEL = "cancel"
    ACK = "ack"
    TEST = "test"
    TAMPER = "tamper"
    TROUBLE = "trouble"


class AlarmKind(StrEnum):
    PANIC = "panic"
    BURGLARY = "burglary"
    FIRE = "fire"
    MEDICAL = "medical"
    GAS = "gas"


class AlarmState(StrEnum):
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    ON_SCENE = "on_scene"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"


# While an alarm is in one of these states its unit's buzzers sound.
ACTIVE_STATES = frozenset({AlarmState.RAISED, AlarmState.ACKNOWLEDGED, AlarmState.ON_SCENE})


class ReceiptStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Reason(StrEnum):
    """Why an event was refused; the first word of a rejected receipt's `error`."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_KIND = "unknown_kind"
    MISSING_SEQ = "missing_seq"
    UNKNOWN_PANEL = "unknown_panel"
    UNKNOWN_ALARM = "unknown_alarm"
    OTHER_UNIT = "other_unit"
    NOT_OWN_ALARM = "not_own_alarm"
    OWN_ALARM = "own_alarm"
    SEQ_REUSED = "seq_reused"
    INVALID_STATE = "invalid_state"
    WRONG_PIN = "wrong_pin"
    CANCEL_LOCKED = "cancel_locked"
    CANCEL_WINDOW_CLOSED = "cancel_window_closed"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    TS_OUT_OF_WINDOW = "ts_out_of_window"
    RATE_LIMITED = "rate_limited"


class ProtocolError(ValueError):
    """A payload the protocol refuses; `seq` is the event's own seq when it could be read."""

    def __init__(self, reason: Reason, detail: str, seq: int | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.seq = seq

    @property
    def error(self) -> str:
        """The text a rejected receipt carries: `reason: detail`."""
        return f"{self.reason.value}: {self.detail}"


Id = Annotated[StrictStr, Field(pattern=ID_RE.pattern)]
Seq = Annotated[StrictInt, Field(ge=0, le=2**53)]
Millis = Annotated[StrictInt, Field(ge=0, le=2**53)]
Pin = Annotated[StrictStr, Field(pattern=r"^[0-9]{4,8}$")]


class _Event(BaseModel):
    # Unknown keys are ignored, not refused: newer panel firmware may send more.
    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: Seq
    ts: Millis


class AlarmEvent(_Event):
    type: Literal[EventType.ALARM]
    kind: AlarmKind


class CancelEvent(_Event):
    type: Literal[EventType.CANCEL]
    alarm_id: Id
    pin: Pin


class AckEvent(_Event):
    type: Literal[EventType.ACK]
    alarm_id: Id


class TestEvent(_Event):
    type: Literal[EventType.TEST]


class TamperEvent(_Event):
    type: Literal[EventType.TAMPER]
    detail: Annotated[StrictStr, Field(max_length=200)] | None = None


class TroubleEvent(_Event):
    type: Literal[EventType.TROUBLE]
    condition: Annotated[StrictStr, Field(pattern=r"^[a-z0-9_]{1,40}$")] | None = None
    detail: Annotated[StrictStr, Field(max_length=200)] | None = None


PanelEvent = Annotated[
    AlarmEvent | CancelEvent | AckEvent | TestEvent | TamperEvent | TroubleEvent,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(PanelEvent)
_EVENT_TYPES = frozenset(t.value for t in EventType)


class Receipt(BaseModel):
    """The hub's answer to one event, on the panel's receipt topic."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: StrictInt
    status: ReceiptStatus
    alarm_id: str | None = None
    error: str | None = None


class PanelStatus(BaseModel):
    """A panel's retained status; its Last Will is `{"state": "offline"}`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    state: Literal["online", "offline"]
    ts: Millis | None = None
    battery: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    fw: Annotated[StrictStr, Field(max_length=64)] | None = None


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    ts: Millis


class UnitAlert(BaseModel):
    """A change of an alarm's state, sent to every panel of the alarm's unit."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    alarm_id: str
    household_id: str
    kind: AlarmKind
    state: AlarmState
    ts: StrictInt


def encode(model: BaseModel) -> bytes:
    """Serialise a protocol model as compact JSON, leaving out fields that are None."""
    return model.model_dump_json(exclude_none=True).encode()


def canonical_json(obj: Any) -> str:
    """Sorted, compact JSON: equal payloads give equal text (used to compare repeats)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


# One decoder for every payload: json.loads with an option builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def load_json_object(payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Decode a payload into a JSON object, or raise ProtocolError saying why not."""
    if len(payload) > max_bytes:
        raise ProtocolError(Reason.TOO_LARGE, f"payload is {len(payload)} bytes, limit {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Reason.NOT_UTF8, "payload is not UTF-8") from None
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError):
        raise ProtocolError(Reason.INVALID_JSON, "payload is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Reason.NOT_OBJECT, "payload must be a JSON object")
    return obj


def _readable_seq(obj: dict[str, Any]) -> int | None:
    seq = obj.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= 2**53:
        return seq
    return None


def _describe(err: dict[str, Any]) -> tuple[Reason, str]:
    loc = ".".join(str(p) for p in err["loc"][1:]) or "payload"
    field = str(err["loc"][-1]) if err["loc"] else "payload"
    if err["type"] == "missing":
        if field == "seq":
            return Reason.MISSING_SEQ, "event has no seq"
        return Reason.MISSING_FIELD, f"field {field!r} is required"
    if field == "kind" and err["type"] == "enum":
        kinds = ", ".join(k.value for k in AlarmKind)
        return Reason.UNKNOWN_KIND, f"unknown alarm kind; expected one of {kinds}"
    return Reason.INVALID_FIELD, f"field {loc!r}: {err['msg']}"


def parse_event(payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> PanelEvent:
    """Parse and validate a panel event; any refusal is a ProtocolError, nothing else."""
    return validate_event(load_json_object(payload, max_bytes))


def validate_event(obj: dict[str, Any]) -> PanelEvent:
    """Validate a decoded JSON object as a panel event; refusals are ProtocolError."""
    seq = _readable_seq(obj)
    event_type = obj.get("type")
    if "type" not in obj:
        raise ProtocolError(Reason.MISSING_FIELD, "field 'type' is required", seq)
    if not isinstance(event_type, str) or event_type not in _EVENT_TYPES:
        types = ", ".join(t.value for t in EventType)
        detail = f"unknown event type; expected one of {types}"
        raise ProtocolError(Reason.UNKNOWN_TYPE, detail, seq)
    try:
        return _EVENT_ADAPTER.validate_python(obj)
    except PydanticValidationError as exc:
        # Report the most useful problem first: a missing seq, then a bad kind.
        errors = sorted(
            exc.errors(include_url=False),
            key=lambda e: (e["loc"][-1:] != ("seq",), e["loc"][-1:] != ("kind",)),
        )
        reason, detail = _describe(errors[0])
        raise ProtocolError(reason, detail, seq) from None
    except RecursionError:
        raise ProtocolError(Reason.INVALID_JSON, "payload nests too deeply", seq) from None


def parse_model(model: type[M], payload: bytes, max_bytes: int = 1024) -> M:
    """Parse a status or heartbeat payload; refusals are ProtocolError."""
    obj = load_json_object(payload, max_bytes)
    try:
        return model.model_validate(obj)
    except PydanticValidationError as exc:
        reason, detail = _describe(exc.errors(include_url=False)[0])
        raise ProtocolError(reason, detail) from None


def parse_heartbeat(payload: bytes, max_bytes: int = 1024) -> int:
    """A heartbeat's `ts`; refusals are ProtocolError, as `parse_model(Heartbeat, ...)` says them.

    Heartbeats are most of what a hub reads (10,000 panels every 10 s), so the usual
    shape is checked here directly and only a doubtful one goes through the model.
    """
    obj = load_json_object(payload, max_bytes)
    ts = obj.get("ts")
    if type(ts) is int and 0 <= ts <= 2**53:
        return ts
    return parse_model(Heartbeat, payload, max_bytes).ts  # says what is wrong


_HUB_TIME = re.compile(r"hub time (\d+)")
_MAX_DOUBLINGS = 30  # caps the exponent, so a retry forever never overflows a float


def hub_time_of(receipt: Receipt) -> int | None:
    """The hub's time (ms) from a `ts_out_of_window` refusal; None for any other receipt."""
    error = receipt.error or ""
    if receipt.status != ReceiptStatus.REJECTED or not error.startswith("ts_out_of_window"):
        return None
    match = _HUB_TIME.search(error)
    return int(match.group(1)) if match else None


def resend_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """An event's own fields, without those a panel sets anew when it sends it again."""
    return {k: v for k, v in payload.items() if k not in ("type", "seq", "ts", "sig")}


def repeat_delay_s(attempts: int, initial_s: float, max_s: float) -> float:
    """How long a panel waits before repeating an event sent `attempts` times: doubling."""
    doublings = min(max(attempts - 1, 0), _MAX_DOUBLINGS)
    return min(initial_s * 2**doublings, max_s)
