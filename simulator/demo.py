"""`tenhub demo`: embedded broker, hub, SMS gateway and a virtual fleet on one machine.

Shows, live, what the product does: a household raises an alarm, the hub stores it and
answers with a receipt, the neighbours' buzzers sound, SMS go out to the patrol and the
key households, someone answers, the household cancels with its PIN and the buzzers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import signal
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from hub.app import Hub
from hub.passwords import hash_password
from hub.registry import Registry
from hub.settings import Settings
from simulator.demo_story import AlertBoard, Tally, one_alarm, summary
from simulator.fleet import PanelFleet
from simulator.twilio_gateway import TwilioGateway

HUB_NUMBER = "+15550001000"


@dataclass
class DemoOptions:
    registry: Registry
    every_s: float = 4.0
    alarms: int = 0  # 0: until Ctrl-C
    http_addr: str = "127.0.0.1:8080"
    data_dir: Path | None = None
    seed: int | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_addr(preferred: str) -> str:
    """The preferred address, or a free port on the same host when it is taken."""
    host, _, port = preferred.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
            return preferred
        except OSError:
            return f"{host}:0"


async def _demo_accounts(hub: Hub, registry: Registry) -> str:
    """A desk and a patrol account for the dashboard; returns their (fresh) password."""
    password = "-".join(secrets.token_hex(3) for _ in range(3))
    hashed = await asyncio.to_thread(hash_password, password)
    zones = tuple(dict.fromkeys(u.zone for u in registry.units))
    patrol = next((p for p in registry.patrols), None)
    now = hub.clock.now_ms()
    for name, role, user_zones, phone in (
        ("desk", "police", zones, None),
        (
            "patrol",
            "patrol",
            (patrol.zone,) if patrol else zones[:1],
            patrol.members[0].phone if patrol and patrol.members else None,
        ),
    ):
        if await hub.accounts.find_user(name):
            await hub.accounts.set_password(name, hashed)
        else:
            await hub.accounts.add_user(name, hashed, role, user_zones, phone, now)
    return password


async def run_demo(options: DemoOptions, console: Console) -> int:
    """Run until Ctrl-C (or `options.alarms` alarms); returns the process exit code."""
    rng = random.Random(options.seed)
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="tenhub-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    broker_port = _free_port()
    gateway = TwilioGateway(phone_number=HUB_NUMBER)
    await asyncio.to_thread(gateway.start)
    settings = Settings(
        broker_url=None,
        embedded_broker_addr=f"127.0.0.1:{broker_port}",
        hub_client_id="tenhub-demo-hub",
        db_path=str(data_dir / "tenhub.db"),
        http_addr=_http_addr(options.http_addr),
        twilio_account_sid=gateway.account_sid,
        twilio_auth_token=gateway.auth_token,
        twilio_from=HUB_NUMBER,
        twilio_api_base=gateway.base_url,
    )
    hub = Hub(settings, options.registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    hub_task = asyncio.create_task(hub.run(), name="hub")
    started = asyncio.create_task(hub.started.wait())
    await asyncio.wait([hub_task, started], return_when=asyncio.FIRST_COMPLETED)
    if hub_task.done():
        started.cancel()
        await asyncio.to_thread(gateway.stop)
        hub_task.result()  # raises the reason the hub could not start
    await hub.transport.connected.wait()

    web = hub.public_url
    counts = options.registry.counts()
    password = await _demo_accounts(hub, options.registry)
    console.print(f"[bold]tenhub demo[/bold]   web: [cyan]{web}[/cyan]")
    console.print(
        f"  log in as [bold]desk[/bold] (police desk, every zone) or [bold]patrol[/bold]"
        f" (patrol phone page), password [bold]{password}[/bold]"
    )
    console.print(
        f"  desk {web}/desk · patrol {web}/patrol · API {web}/docs · health {web}/healthz"
    )
    console.print(
        f"  broker: embedded, mqtt://127.0.0.1:{broker_port} · SMS gateway: {gateway.base_url}"
        f" · data: {data_dir}"
    )

    board = AlertBoard()
    fleet = PanelFleet(
        options.registry, "127.0.0.1", broker_port, data_dir / "panels", on_alert=board.on_alert
    )
    await asyncio.to_thread(fleet.start)
    console.print(
        f"  fleet: {len(fleet.panels)} virtual panels online in {counts['units']} units."
        f" A household raises an alarm every {options.every_s:g} s; Ctrl-C stops.\n"
    )
    tally = Tally()
    try:
        while not stop.is_set() and (options.alarms == 0 or tally.raised < options.alarms):
            await one_alarm(
                hub, gateway, options.registry, fleet, board, tally, console, rng, options.every_s
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.every_s):
                    await stop.wait()
    finally:
        console.print("\nstopping…")
        for task in list(tally.background):
            task.cancel()
        await asyncio.to_thread(fleet.stop)
        await asyncio.to_thread(gateway.stop_callbacks)  # none to a hub that has stopped
        hub.stop()
        await hub_task
        await asyncio.to_thread(gateway.stop)
        summary(tally, console)
    return 1 if tally.problems else 0
