"""Thousands of virtual panels in one process: one per household of a registry, on asyncio."""

from __future__ import annotations

import asyncio
import logging
import resource
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from devices.protocol import Receipt
from devices.unit_alarms import AlertChange
from hub.registry.model import Registry
from simulator.virtual_panel import PendingEvent, VirtualPanel

logger = logging.getLogger(__name__)

AlertCallback = Callable[[str, AlertChange], None]
ProgressCallback = Callable[[int, int], None]
_KEPT_LATENCIES = 10_000


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of the fleet; latencies are first copy sent → receipt, over recent receipts."""

    total: int
    online: int
    alarms_raised: int
    receipts: int
    buzzers_sounding: int
    reconnects: int
    receipt_latency_median_s: float | None
    receipt_latency_max_s: float | None


class AsyncFleet:
    """Every household's panel of a registry (or of some units), connected to one broker."""

    def __init__(
        self,
        registry: Registry,
        host: str,
        port: int,
        *,
        heartbeat_s: float = 10.0,
        unit_ids: set[str] | None = None,
        max_units: int | None = None,
        username_of: Callable[[str], str | None] = lambda panel_id: panel_id,
        password_of: Callable[[str], str | None] | None = None,
        connect_concurrency: int = 200,
        on_alert: AlertCallback | None = None,
        retry_initial_s: float = 1.0,
    ) -> None:
        self.registry = registry
        self.connect_concurrency = connect_concurrency
        self.on_alert = on_alert
        self.panels: dict[str, VirtualPanel] = {}
        self.failed: dict[str, BaseException] = {}
        self._latencies: deque[float] = deque(maxlen=_KEPT_LATENCIES)
        self._started: list[VirtualPanel] = []
        self._make_options = {
            "host": host,
            "port": port,
            "heartbeat_s": heartbeat_s,
            "retry_initial_s": retry_initial_s,
            "username_of": username_of,
            "password_of": password_of,
        }
        units = [u for u in registry.units if unit_ids is None or u.id in unit_ids]
        for unit in units[:max_units]:
            for household in unit.households:
                self.panels[household.panel] = self._make(household.panel, unit.id, household.id)

    def _make(self, panel_id: str, unit_id: str, household_id: str) -> VirtualPanel:
        o = self._make_options
        return VirtualPanel(
            panel_id,
            o["host"],
            o["port"],
            username=o["username_of"](panel_id),
            password=o["password_of"](panel_id) if o["password_of"] else None,
            household_id=household_id,
            unit_id=unit_id,
            heartbeat_s=o["heartbeat_s"],
            retry_initial_s=o["retry_initial_s"],
            on_alert=self._alert_hook(panel_id),
            on_receipt=self._on_receipt,
        )

    async def restart(self, panel_id: str, timeout: float = 10.0) -> VirtualPanel:
        """Power a panel back on: a new one with the same id takes its place and connects."""
        old = self.panels[panel_id]
        assert old.unit_id is not None and old.household_id is not None
        panel = self._make(panel_id, old.unit_id, old.household_id)
        self.panels[panel_id] = panel
        await panel.start(timeout)
        self._started.append(panel)
        return panel

    def __getitem__(self, panel_id: str) -> VirtualPanel:
        return self.panels[panel_id]

    def __len__(self) -> int:
        return len(self.panels)

    def unit_panels(self, unit_id: str) -> list[VirtualPanel]:
        """The fleet's panels of one unit, in registry order."""
        return [self.panels[p] for p in self.registry.unit_panels(unit_id) if p in self.panels]

    async def start(
        self, progress: ProgressCallback | None = None, timeout: float = 30.0
    ) -> dict[str, BaseException]:
        """Connect every panel, a bounded number at once; returns (and keeps) those that failed."""
        raise_fd_limit(len(self.panels) + 256)
        gate = asyncio.Semaphore(self.connect_concurrency)
        total, done = len(self.panels), 0

        async def start_one(panel: VirtualPanel) -> None:
            nonlocal done
            async with gate:
                try:
                    await panel.start(timeout)
                    self._started.append(panel)
                except Exception as exc:  # refused, unreachable, timed out: counted, not fatal
                    self.failed[panel.panel_id] = exc
                    logger.warning(
                        "panel could not connect",
                        extra={"panel_id": panel.panel_id, "error": repr(exc)},
                    )
            done += 1
            if progress is not None:
                progress(done, total)

        await asyncio.gather(*(start_one(p) for p in self.panels.values()))
        return dict(self.failed)

    async def stop(self, concurrency: int = 500) -> None:
        """Stop every started panel gracefully (retained offline status, DISCONNECT)."""
        gate = asyncio.Semaphore(concurrency)

        async def stop_one(panel: VirtualPanel) -> None:
            async with gate:
                try:
                    await panel.stop()
                except Exception:
                    logger.exception(
                        "panel did not stop cleanly", extra={"panel_id": panel.panel_id}
                    )

        started, self._started = self._started, []
        await asyncio.gather(*(stop_one(p) for p in started))

    def stats(self) -> FleetStats:
        """Counts over every panel, and receipt latencies of the last receipts."""
        online = alarms = receipts = sounding = reconnects = 0
        for panel in self.panels.values():
            online += panel.connected
            alarms += panel.alarms_raised
            receipts += panel.receipts
            sounding += panel.buzzer_on
            reconnects += panel.reconnects
        latencies = self._latencies
        return FleetStats(
            total=len(self.panels),
            online=online,
            alarms_raised=alarms,
            receipts=receipts,
            buzzers_sounding=sounding,
            reconnects=reconnects,
            receipt_latency_median_s=statistics.median(latencies) if latencies else None,
            receipt_latency_max_s=max(latencies) if latencies else None,
        )

    def _on_receipt(self, event: PendingEvent, _receipt: Receipt) -> None:
        if event.latency_s is not None:
            self._latencies.append(event.latency_s)

    def _alert_hook(self, panel_id: str) -> Callable[[AlertChange], None] | None:
        if self.on_alert is None:
            return None
        callback = self.on_alert
        return lambda change: callback(panel_id, change)


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft open-files limit towards needed (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
