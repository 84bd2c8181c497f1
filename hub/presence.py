"""Who is online: panels' status and heartbeats, kept in memory (no write per beat)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class PanelPresence:
    state: str = "unknown"
    last_seen: int = 0  # hub time, ms, of the last status or heartbeat
    battery: int | None = None
    fw: str | None = None


class PresenceTracker:
    """The last word of every panel: online/offline, last seen, battery, firmware."""

    def __init__(self, on_change: Callable[[str, str], None] | None = None) -> None:
        self._panels: dict[str, PanelPresence] = {}
        self._on_change = on_change  # (panel_id, new state) when a panel goes on or offline

    def status(
        self, panel_id: str, state: str, now: int, battery: int | None, fw: str | None
    ) -> None:
        p = self._panels.setdefault(panel_id, PanelPresence())
        changed = p.state != state
        p.state = state
        p.last_seen = now
        if battery is not None:
            p.battery = battery
        if fw is not None:
            p.fw = fw
        if changed and self._on_change is not None:
            self._on_change(panel_id, state)

    def heartbeat(self, panel_id: str, now: int) -> None:
        p = self._panels.setdefault(panel_id, PanelPresence())
        p.last_seen = now
        if p.state == "unknown":
            p.state = "online"
            if self._on_change is not None:
                self._on_change(panel_id, "online")

    def get(self, panel_id: str) -> PanelPresence | None:
        return self._panels.get(panel_id)

    def online_count(self) -> int:
        return sum(1 for p in self._panels.values() if p.state == "online")
