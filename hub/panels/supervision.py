"""Panel supervision: a silent or tampered panel becomes a trouble, its household is told once.

The named job `panel-supervisor` flushes panels' presence to the database in batches,
marks a panel offline when it has been silent longer than `offline_after` (or its Last
Will said so), and opens or closes troubles. After the hub (re)connects to the broker it
judges nobody for one `offline_after`: a broker or hub restart must not turn every
panel into a trouble and a flood of SMS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from hub.alarms.work import AfterCommit, AlarmContext, Work
from hub.clock import Clock
from hub.panels.panel_store import PanelStore
from hub.panels.presence import PresenceTracker
from hub.registry.model import PanelPlace
from hub.storage.db import Conn, Database

logger = logging.getLogger(__name__)

TROUBLE_WORDS = {
    "offline": "is offline: check its power and network; your neighbours' alarms cannot reach it",
    "tamper": "reports tampering; if this was not you, call your patrol",
    "low_battery": "reports a low battery; replace it soon",
    "power_loss": "has lost mains power and runs on its battery",
}


def open_trouble(
    w: Work,
    place: PanelPlace,
    kind: str,
    detail: dict | None = None,
    *,
    tell_household: bool = True,
) -> int | None:
    """Open a trouble and tell the household by SMS, once; None if it was open already.

    tell_household False keeps it for the desk and the operator: bookkeeping the household
    can do nothing about.
    """
    trouble_id = w.troubles.open(place.household.panel, kind, w.now, detail)
    if trouble_id is None:
        return None
    logger.warning("panel trouble", extra={"panel_id": place.household.panel, "kind": kind})
    if not tell_household:
        return trouble_id
    since = time.strftime("%H:%M", time.localtime(w.now / 1000))
    words = TROUBLE_WORDS.get(kind, f"reports trouble: {kind.replace('_', ' ')}")
    text = (
        f"tenhub: the alarm panel of {place.unit.name}, {place.household.address} {words}"
        f" (since {since})."
    )
    for phone in place.household.phones:
        w.outbox.enqueue(
            alarm_id=None,
            channel="sms",
            recipient=phone,
            payload=json.dumps({"text": text}, ensure_ascii=False),
            idempotency_key=f"trouble:{trouble_id}:{phone}",
            now=w.now,
        )
        w.queued += 1
    return trouble_id


class PanelSupervisor:
    """The named job `panel-supervisor`."""

    name = "panel-supervisor"

    def __init__(
        self,
        db: Database,
        store: PanelStore,
        presence: PresenceTracker,
        context: AlarmContext,
        clock: Clock,
        *,
        offline_after_ms: int,
        connected_since: Callable[[], int | None],
        on_commit: AfterCommit,
    ) -> None:
        self.db = db
        self.store = store
        self.presence = presence
        self.context = context
        self.clock = clock
        self.offline_after_ms = offline_after_ms
        self.connected_since = connected_since
        self.on_commit = on_commit
        self._open_offline: set[str] | None = None  # panels with an open offline trouble

    async def run_once(self) -> float | None:
        now = self.clock.now_ms()
        # A slice at a time: after a broker restart every panel has changed, and making
        # 10,000 rows at once held the event loop (and the alarms on it) for 10 ms.
        for _ in range(-(-self.presence.dirty_count() // _PRESENCE_ROWS_PER_WRITE)):
            rows = self.presence.take_dirty(_PRESENCE_ROWS_PER_WRITE)
            await self.store.save_presence(rows, now)
        if self._open_offline is None:
            self._open_offline = {
                t.panel_id for t in await self.store.troubles() if t.kind == "offline"
            }
        since = self.connected_since()
        if since is None or now < since + self.offline_after_ms:
            return None  # deaf, or just back: nobody is judged yet
        to_open, to_close = await self._judge(now)
        if to_open or to_close:
            await self._record(to_open, to_close, now)
        return None  # judged again on the runner's next tick

    async def _judge(self, now: int) -> tuple[list[PanelPlace], list[str]]:
        """(panels to open an offline trouble for, panels whose offline trouble closes).

        A slice of panels at a time, with the event loop's turn between slices: all
        10,000 at once held it for 6 ms every second, and an alarm arriving then waited.
        """
        places = self.context.registry.panel_places()
        panel_ids = list(places)
        cutoff = now - self.offline_after_ms
        open_offline = self._open_offline
        assert open_offline is not None
        to_open: list[PanelPlace] = []
        to_close: list[str] = []
        for start in range(0, len(panel_ids), _JUDGED_AT_ONCE):
            if start:
                await asyncio.sleep(0)
            online, offline = self.presence.sort_out(
                panel_ids[start : start + _JUDGED_AT_ONCE], cutoff
            )
            to_open += [places[p] for p in offline if p not in open_offline]
            to_close += [p for p in online if p in open_offline]
        return to_open, to_close

    async def _record(self, to_open: list[PanelPlace], to_close: list[str], now: int) -> None:
        # A district losing power turns thousands of panels offline at once: their
        # troubles go in transactions of a hundred, so an alarm raised meanwhile waits
        # behind one of them (a few ms), not behind all (most of a second).
        for start in range(0, max(len(to_open), len(to_close)), _TROUBLES_PER_WRITE):
            opening = to_open[start : start + _TROUBLES_PER_WRITE]
            closing = to_close[start : start + _TROUBLES_PER_WRITE]
            queued = await self.db.write(
                lambda conn, opening=opening, closing=closing: self._write_troubles(
                    conn, opening, closing, now
                )
            )
            assert self._open_offline is not None
            self._open_offline |= {p.household.panel for p in opening}
            self._open_offline -= set(closing)
            self.on_commit(queued, (), ())
        if to_close:
            logger.info("panels back online", extra={"count": len(to_close)})

    def _write_troubles(
        self, conn: Conn, opening: list[PanelPlace], closing: list[str], now: int
    ) -> int:
        work = Work.begin(conn, self.context, now)
        for place in opening:
            last = self.presence.get(place.household.panel)
            detail = {"last_seen": last.last_seen} if last and last.last_seen else None
            open_trouble(work, place, "offline", detail)
        for panel_id in closing:
            work.troubles.close(panel_id, "offline", now)
        return work.queued


_TROUBLES_PER_WRITE = 100
# Presence rows per transaction: about a millisecond of the writer on a quiet hub; 250
# took 2-5 ms with 100 alarms a second, an alarm waiting behind them.
_PRESENCE_ROWS_PER_WRITE = 100
_JUDGED_AT_ONCE = 1_000  # panels judged between two turns of the event loop
