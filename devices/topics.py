"""MQTT topic names of wire protocol v1, built and parsed in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "tenhub/v1"
ID_RE = re.compile(r"^[a-z0-9-]{1,64}$")

PanelChannel = Literal["event", "receipt", "status", "heartbeat"]
PANEL_CHANNELS: tuple[PanelChannel, ...] = ("event", "receipt", "status", "heartbeat")

# Topic filters over every panel or unit (for the hub's subscriptions and broker ACLs).
ALL_RECEIPTS = f"{ROOT}/panel/+/receipt"
ALL_UNIT_ALERTS = f"{ROOT}/unit/+/alert"

# What the hub subscribes to; receipts and unit alerts are the hub's own output.
HUB_SUBSCRIPTIONS: tuple[tuple[str, int], ...] = (
    (f"{ROOT}/panel/+/event", 1),
    (f"{ROOT}/panel/+/status", 1),
    (f"{ROOT}/panel/+/heartbeat", 0),
)


def is_valid_id(value: object) -> bool:
    """True when value is a protocol id: lower-case [a-z0-9-], 1 to 64 characters."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def _id(value: str) -> str:
    # An id goes into a topic: '/', '+', '#' or a NUL would change what the topic means.
    if not is_valid_id(value):
        raise ValueError(f"{value!r} is not a protocol id (lower-case [a-z0-9-], 1-64)")
    return value


def event_topic(panel_id: str) -> str:
    """Topic on which a panel publishes its events."""
    return f"{ROOT}/panel/{_id(panel_id)}/event"


def receipt_topic(panel_id: str) -> str:
    """Topic on which the hub answers a panel's events."""
    return f"{ROOT}/panel/{_id(panel_id)}/receipt"


def status_topic(panel_id: str) -> str:
    """Retained topic carrying a panel's online state and its Last Will."""
    return f"{ROOT}/panel/{_id(panel_id)}/status"


def heartbeat_topic(panel_id: str) -> str:
    """Topic of a panel's periodic heartbeat."""
    return f"{ROOT}/panel/{_id(panel_id)}/heartbeat"


def unit_alert_topic(unit_id: str) -> str:
    """Topic on which the hub tells every panel of a unit about its alarms."""
    return f"{ROOT}/unit/{_id(unit_id)}/alert"


@dataclass(frozen=True, slots=True)
class PanelTopic:
    """A parsed panel topic: which panel, which channel."""

    panel_id: str
    channel: PanelChannel


def parse_panel_topic(topic: str) -> PanelTopic | None:
    """Parse `tenhub/v1/panel/{id}/{channel}`; None for anything else (bad id included)."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "tenhub" or parts[1] != "v1" or parts[2] != "panel":
        return None
    panel_id, channel = parts[3], parts[4]
    if not is_valid_id(panel_id) or channel not in PANEL_CHANNELS:
        return None
    return PanelTopic(panel_id, channel)  # type: ignore[arg-type]
