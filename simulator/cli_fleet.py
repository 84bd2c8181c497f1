"""`tenhub sim fleet` and `tenhub sim make-registry`: a load fleet and the registries it runs on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from devices.protocol import AlarmKind, ReceiptStatus
from hub.problems import ConfigError
from hub.registry.model import Registry, load_registry
from hub.settings import BrokerAddress
from simulator.fleet_async import AsyncFleet, FleetStats
from simulator.registry_gen import default_zones, make_registry

fleet_app = typer.Typer(help="A fleet of virtual panels, and registries to run it on.")
err = Console(stderr=True, highlight=False, soft_wrap=True)

CANCEL_AFTER_S = 3.0  # a drill alarm is cancelled with the household PIN after this


@fleet_app.command("fleet")
def fleet(
    registry: Annotated[Path, typer.Option(help="Registry YAML whose panels to simulate.")],
    units: Annotated[int | None, typer.Option(help="Only the first N units.", min=1)] = None,
    broker: Annotated[
        str,
        typer.Option(
            envvar="TENHUB_BROKER_URL",
            help="mqtt://user:pass@host:port; without a user each panel logs in as its id.",
        ),
    ] = "mqtt://127.0.0.1:1883",
    heartbeat_s: Annotated[float, typer.Option(help="Seconds between heartbeats.", min=1)] = 10,
    alarm_every: Annotated[
        float | None,
        typer.Option(help="Raise a drill alarm every S seconds (cancelled with the PIN)."),
    ] = None,
    connect_concurrency: Annotated[int, typer.Option(help="Connects in flight.", min=1)] = 200,
) -> None:
    """Run every household's panel of a registry on a broker, with a live summary; Ctrl-C stops."""
    try:
        address = BrokerAddress.parse(broker)
    except ValueError as exc:
        err.print(f"tenhub sim fleet: {exc}", style="red", markup=False)
        raise typer.Exit(2) from None
    if address.tls:
        err.print("tenhub sim fleet: mqtts:// is not supported by the fleet", style="red")
        raise typer.Exit(2)
    err.print(f"loading {registry} …", markup=False)
    try:
        reg = load_registry(registry)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem.format(), style="red", markup=False)
        raise typer.Exit(2) from None
    user, password = address.username, address.password
    credentials = {} if user is None else {
        "username_of": lambda _panel_id: user, "password_of": lambda _panel_id: password,
    }  # fmt: skip
    panels = AsyncFleet(
        reg, address.host, address.port, heartbeat_s=heartbeat_s, max_units=units,
        connect_concurrency=connect_concurrency, **credentials,
    )  # fmt: skip
    asyncio.run(_run_fleet(panels, reg, address.display(), alarm_every))


async def _run_fleet(
    fleet: AsyncFleet, registry: Registry, where: str, alarm_every: float | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    drills: set[asyncio.Task[None]] = set()
    with Live(_summary(fleet.stats(), where, "connecting"), console=err, transient=False) as live:
        starting = asyncio.create_task(fleet.start())
        while not starting.done() and not stop.is_set():
            live.update(_summary(fleet.stats(), where, "connecting"))
            await asyncio.wait([starting], timeout=0.25)
        rng = random.Random()
        next_alarm = loop.time() + (alarm_every or 0)
        while not stop.is_set() and starting.done():
            if alarm_every and loop.time() >= next_alarm:
                next_alarm += alarm_every
                task = asyncio.create_task(_drill(fleet, registry, rng))
                drills.add(task)
                task.add_done_callback(drills.discard)
            failed = f", {len(fleet.failed)} failed to connect" if fleet.failed else ""
            live.update(_summary(fleet.stats(), where, f"running{failed}; Ctrl-C stops"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)  # a second Ctrl-C interrupts a slow stop
        live.update(_summary(fleet.stats(), where, "stopping"))
        starting.cancel()
        for task in drills:
            task.cancel()
        await asyncio.gather(starting, *drills, return_exceptions=True)
        await fleet.stop()
        live.update(_summary(fleet.stats(), where, "stopped"))


async def _drill(fleet: AsyncFleet, registry: Registry, rng: random.Random) -> None:
    """A random online panel raises an alarm, then cancels it with its household's PIN."""
    online = [p for p in fleet.panels.values() if p.connected]
    if not online:
        return
    panel = rng.choice(online)
    receipt = await panel.raise_alarm(rng.choice(list(AlarmKind))).wait(30)
    if receipt is None or receipt.status != ReceiptStatus.ACCEPTED or receipt.alarm_id is None:
        return
    await asyncio.sleep(CANCEL_AFTER_S)
    place = registry.panel_place(panel.panel_id)
    if place is not None and place.household.pin is not None:
        await panel.cancel(receipt.alarm_id, place.household.pin).wait(30)


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms"


def _summary(stats: FleetStats, where: str, phase: str) -> Table:
    table = Table(title=f"tenhub fleet → {where} ({phase})", show_header=False, min_width=48)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("panels online", f"{stats.online:,} / {stats.total:,}")
    table.add_row("alarms raised", f"{stats.alarms_raised:,}")
    table.add_row("receipts", f"{stats.receipts:,}")
    table.add_row("receipt latency, median", _ms(stats.receipt_latency_median_s))
    table.add_row("receipt latency, worst", _ms(stats.receipt_latency_max_s))
    table.add_row("buzzers sounding", f"{stats.buzzers_sounding:,}")
    table.add_row("reconnects", f"{stats.reconnects:,}")
    return table


@fleet_app.command("make-registry")
def make_registry_command(
    units: Annotated[int, typer.Option(help="How many units of ten households.", min=1)],
    zones: Annotated[int | None, typer.Option(help="Zones (default: one per 20 units).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same registry.")] = 0,
    out: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
) -> None:
    """Write a valid registry of any size (ids, phones, PINs, patrols, desks) for load tests."""
    try:
        text = make_registry(units, zones=zones, seed=seed)
    except ValueError as exc:
        err.print(f"tenhub sim make-registry: {exc}", style="red", markup=False)
        raise typer.Exit(2) from None
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    zone_count = zones if zones is not None else default_zones(units)
    err.print(
        f"registry: {units:,} units, {units * 10:,} households and panels, "
        f"{zone_count:,} zone{'' if zone_count == 1 else 's'}, seed {seed} → {out or 'stdout'}",
        markup=False,
    )
