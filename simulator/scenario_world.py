"""Everything a scenario runs against: a broker, the SMS gateway, a hub process, a fleet.

The hub runs as its own process so a scenario can kill it the hard way; its clock runs
`speed` times faster than the wall clock, so a ladder of minutes plays out in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from hub.alarms.alarm_store import AlarmStore
from hub.alarms.outbox_store import OutboxStore
from hub.panels.panel_store import PanelStore
from hub.registry.model import Registry
from hub.storage.db import Database
from simulator.brokers import EmbeddedBrokerThread, Mosquitto, free_port, mosquitto_available
from simulator.fleet_async import AsyncFleet
from simulator.hub_process import HubProcess
from simulator.twilio_gateway import TwilioGateway

logger = logging.getLogger(__name__)

HUB_NUMBER = "+15550001000"


class World:
    """Starts and stops the parts; knows hub time."""

    def __init__(
        self,
        workdir: Path,
        registry: Registry,
        registry_path: Path,
        *,
        speed: float,
        heartbeat_s: float,
        policy_path: Path | None = None,
        unit_ids: set[str] | None = None,
        db_url: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.registry = registry
        self.speed = speed
        self.epoch_ms = time.time_ns() // 1_000_000
        if mosquitto_available():
            self.broker: Mosquitto | EmbeddedBrokerThread = Mosquitto(workdir / "mosquitto")
        else:
            self.broker = EmbeddedBrokerThread()
        self.gateway = TwilioGateway(phone_number=HUB_NUMBER, callback_delay_s=0.01)
        env = {
            "TENHUB_BROKER_URL": self.broker.url.replace("mqtt://", "mqtt://tenhub-hub@"),
            "TENHUB_REGISTRY": str(registry_path),
            "TENHUB_CLOCK_SPEED": str(speed),
            "TENHUB_CLOCK_EPOCH_MS": str(self.epoch_ms),
            "TENHUB_HEARTBEAT_S": str(heartbeat_s),
            "TWILIO_ACCOUNT_SID": self.gateway.account_sid,
            "TWILIO_AUTH_TOKEN": self.gateway.auth_token,
            "TWILIO_FROM": HUB_NUMBER,
            "TENHUB_LOG_FORMAT": "json",
        }
        if policy_path is not None:
            env["TENHUB_POLICY"] = str(policy_path)
        if db_url is not None:  # PostgreSQL; else a SQLite file in the hub's folder
            env["TENHUB_DB_URL"] = db_url
        self.hub = HubProcess(workdir / "hub", free_port(), env)
        # Panels beat in wall time; the hub expects a beat every heartbeat_s of hub time.
        self.fleet = AsyncFleet(
            registry,
            "127.0.0.1",
            self.broker.port,
            heartbeat_s=heartbeat_s / speed,
            unit_ids=unit_ids,
            retry_initial_s=0.2,
        )
        self.db: Database | None = None
        self.alarms: AlarmStore | None = None
        self.outbox: OutboxStore | None = None
        self.panels: PanelStore | None = None

    def hub_now_ms(self) -> int:
        """The hub's time (the same scaled clock, from the same epoch)."""
        wall = time.time_ns() // 1_000_000
        return self.epoch_ms + int((wall - self.epoch_ms) * self.speed)

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.broker.start)
        self.gateway.start()
        self.hub.env["TENHUB_TWILIO_API_BASE"] = self.gateway.base_url
        await asyncio.to_thread(self.hub.start)
        failed = await self.fleet.start()
        if failed:
            raise RuntimeError(f"{len(failed)} panels could not connect: {sorted(failed)[:5]}")
        # The hub's own stores, read-only use, on its database.
        self.db = Database(self.hub.database, readers=2)
        await self.db.open()
        self.alarms = AlarmStore(self.db)
        self.outbox = OutboxStore(self.db)
        self.panels = PanelStore(self.db)

    async def stop(self) -> None:
        await self.fleet.stop()
        await asyncio.to_thread(self.hub.stop)
        if self.db is not None:
            await self.db.close()
        self.gateway.stop()
        await asyncio.to_thread(self.broker.stop)

    async def restart_broker(self, down_for_s: float) -> None:
        await asyncio.to_thread(self.broker.stop)
        await asyncio.sleep(down_for_s)
        await asyncio.to_thread(self.broker.start)

    async def kill_hub(self, down_for_s: float) -> None:
        await asyncio.to_thread(self.hub.kill)
        await asyncio.sleep(down_for_s)
        await asyncio.to_thread(self.hub.start)
