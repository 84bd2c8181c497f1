"""A fleet of virtual panels: one reference panel per household of a registry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devices.panel import AlertChange, ReferencePanel
from hub.registry.model import Registry

logger = logging.getLogger(__name__)

AlertCallback = Callable[[str, AlertChange], None]


class PanelFleet:
    """Every household's panel, connected to one broker; `on_alert(panel_id, change)`."""

    def __init__(
        self,
        registry: Registry,
        host: str,
        port: int,
        state_dir: Path,
        *,
        heartbeat_s: float = 10.0,
        retry_initial_s: float = 1.0,
        on_alert: AlertCallback | None = None,
        unit_ids: set[str] | None = None,
    ) -> None:
        self.registry = registry
        self.panels: dict[str, ReferencePanel] = {}
        for unit in registry.units:
            if unit_ids is not None and unit.id not in unit_ids:
                continue
            for household in unit.households:
                panel_id = household.panel
                self.panels[panel_id] = ReferencePanel(
                    panel_id,
                    host,
                    port,
                    state_dir=state_dir,
                    username=panel_id,  # the embedded broker wants a name; Mosquitto's ACLs too
                    household_id=household.id,
                    unit_id=unit.id,
                    heartbeat_s=heartbeat_s,
                    retry_initial_s=retry_initial_s,
                    on_alert=_bind(on_alert, panel_id),
                )

    def start(self, *, parallel: int = 16, timeout: float = 10.0) -> None:
        """Connect every panel (several at a time); raises if one cannot connect."""
        with ThreadPoolExecutor(parallel, thread_name_prefix="fleet-start") as pool:
            for result in pool.map(lambda p: p.start(timeout), self.panels.values()):
                del result

    def stop(self) -> None:
        """Stop every panel cleanly (retained offline status, DISCONNECT)."""
        with ThreadPoolExecutor(16, thread_name_prefix="fleet-stop") as pool:
            list(pool.map(_stop_quietly, self.panels.values()))

    def __getitem__(self, panel_id: str) -> ReferencePanel:
        return self.panels[panel_id]

    def unit_panels(self, unit_id: str) -> list[ReferencePanel]:
        return [self.panels[p] for p in self.registry.unit_panels(unit_id) if p in self.panels]


def _bind(callback: AlertCallback | None, panel_id: str) -> Callable[[AlertChange], None] | None:
    if callback is None:
        return None
    return lambda change: callback(panel_id, change)


def _stop_quietly(panel: ReferencePanel) -> None:
    try:
        panel.stop()
    except Exception:
        logger.exception("panel did not stop cleanly", extra={"panel_id": panel.panel_id})
