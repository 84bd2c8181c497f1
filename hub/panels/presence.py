"""Who is online: panels' status and heartbeats, kept in memory (no write per beat).

The supervision job flushes what changed to the database in batches and decides when a
silent panel is offline; this class only records what panels say.

The hub judges panels from memory; the database's copy is what a restarted hub starts
from. So a live panel's row is written when something about it changes, and its
last-seen time refreshed about once every LAST_SEEN_REFRESH_MS: with 10,000 panels,
writing every heartbeat's time meant a thousand rows a second, in bursts that held up
alarms. Each panel has an interval of its own, between half and one and a half of that:
with one interval for all, panels that came online together (after a broker restart,
all of them) were all refreshed within the same few seconds every minute, thousands of
rows at once, and alarms raised then waited behind them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

LAST_SEEN_REFRESH_MS = 60_000

# What the database keeps of a panel: (panel_id, state, last_seen, battery, fw).
PresenceRow = tuple[str, str, int, int | None, str | None]


@dataclass(slots=True)
class PanelPresence:
    state: str = "unknown"  # online | offline | unknown (never heard since the hub started)
    last_seen: int = 0  # hub time, ms, of the last sign of life (online status or heartbeat)
    battery: int | None = None
    fw: str | None = None
    refresh_at: int = 0  # hub time, ms, after which a heartbeat's time is written again


class PresenceTracker:
    """The last word of every panel: online/offline, last seen, battery, firmware."""

    def __init__(
        self,
        on_change: Callable[[str, str], None] | None = None,
        refresh_ms: int = LAST_SEEN_REFRESH_MS,
    ) -> None:
        self._panels: dict[str, PanelPresence] = {}
        self.refresh_ms = refresh_ms
        self._on_change = on_change  # (panel_id, new state) when a panel goes on or offline
        self._online = 0
        self._dirty: set[str] = set()

    def _set_state(self, panel_id: str, p: PanelPresence, state: str) -> None:
        if p.state == state:
            return
        self._online += (state == "online") - (p.state == "online")
        p.state = state
        if self._on_change is not None:
            self._on_change(panel_id, state)

    def status(
        self, panel_id: str, state: str, now: int, battery: int | None, fw: str | None
    ) -> None:
        """A retained status: `online` after a connect, `offline` from the Will or a stop."""
        p = self._panels.setdefault(panel_id, PanelPresence())
        if state == "online":
            p.last_seen = now  # an offline status (the Will) is no sign of life
        if battery is not None:
            p.battery = battery
        if fw is not None:
            p.fw = fw
        self._dirty.add(panel_id)
        self._set_state(panel_id, p, state)

    def heartbeat(self, panel_id: str, now: int) -> None:
        """A heartbeat: the panel is alive, whatever it said before."""
        p = self._panels.get(panel_id)  # a thousand a second: no new object to throw away
        if p is None:
            p = self._panels[panel_id] = PanelPresence()
        p.last_seen = now
        if p.state != "online" or now >= p.refresh_at:
            self._dirty.add(panel_id)
        self._set_state(panel_id, p, "online")

    def silent(self, panel_id: str) -> None:
        """Supervision found the panel silent too long: it counts as offline now."""
        p = self._panels.setdefault(panel_id, PanelPresence())
        self._dirty.add(panel_id)
        self._set_state(panel_id, p, "offline")

    def get(self, panel_id: str) -> PanelPresence | None:
        return self._panels.get(panel_id)

    def items(self) -> list[tuple[str, PanelPresence]]:
        return list(self._panels.items())

    def dirty_count(self) -> int:
        """How many panels changed since they were last taken."""
        return len(self._dirty)

    def take_dirty(self, limit: int | None = None) -> list[PresenceRow]:
        """Panels changed since they were last taken (at most `limit`), as rows to write."""
        if limit is None or limit >= len(self._dirty):
            dirty, self._dirty = self._dirty, set()
        else:
            pop = self._dirty.pop
            dirty = {pop() for _ in range(limit)}
        panels = self._panels
        rows: list[PresenceRow] = []
        for pid in dirty:
            if (p := panels.get(pid)) is not None:
                p.refresh_at = p.last_seen + self.refresh_interval_ms(pid, p.last_seen)
                rows.append((pid, p.state, p.last_seen, p.battery, p.fw))
        return rows

    def refresh_interval_ms(self, panel_id: str, seen: int) -> int:
        """How long the last-seen `seen` of a live panel, once written, may age.

        Between half and one and a half of `refresh_ms`, spread by a hash of both: one
        interval per panel would bring panels together again (refreshes happen at
        heartbeats, so a 30 s panel and a 40 s one meet every 120 s).
        """
        return self.refresh_ms // 2 + zlib.crc32(f"{panel_id}@{seen}".encode()) % self.refresh_ms

    def sort_out(self, panel_ids: Iterable[str], cutoff: int) -> tuple[list[str], list[str]]:
        """(online, not online) among these panels, in their order; an online panel silent
        since before `cutoff` counts as offline from now on."""
        online: list[str] = []
        offline: list[str] = []
        get = self._panels.get  # 10,000 panels every second: no method call per panel
        for panel_id in panel_ids:
            p = get(panel_id)
            if p is not None and p.state == "online":
                if p.last_seen >= cutoff:
                    online.append(panel_id)
                    continue
                self.silent(panel_id)  # alive once, silent too long now
            offline.append(panel_id)
        return online, offline

    def restore(self, panel_id: str, presence: PanelPresence) -> None:
        """Take a panel's last known state from the database at start (no event fired)."""
        if panel_id not in self._panels:
            self._panels[panel_id] = presence
            self._online += presence.state == "online"

    def online_count(self) -> int:
        return self._online
