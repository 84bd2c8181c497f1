"""`tenhub demo`: embedded broker, hub and a virtual fleet on one machine, alarms on a loop.

Shows, live, what the product does: a household raises an alarm, the hub stores it and
answers with a receipt, the neighbours' buzzers sound, the household cancels with its PIN
and the buzzers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from devices.panel import AlertChange
from devices.protocol import AlarmKind, ReceiptStatus
from hub.app import Hub
from hub.registry import Registry
from hub.settings import Settings
from simulator.fleet import PanelFleet

KINDS = [AlarmKind.BURGLARY, AlarmKind.PANIC, AlarmKind.FIRE, AlarmKind.MEDICAL, AlarmKind.GAS]


@dataclass
class DemoOptions:
    registry: Registry
    every_s: float = 4.0
    alarms: int = 0  # 0: until Ctrl-C
    http_addr: str = "127.0.0.1:8080"
    data_dir: Path | None = None
    seed: int | None = None


class AlertBoard:
    """Which panels sound for which alarm, fed from the panels' threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.started: dict[str, set[str]] = {}
        self.stopped: dict[str, set[str]] = {}

    def on_alert(self, panel_id: str, change: AlertChange) -> None:
        with self._cond:
            alarm_id = change.alert.alarm_id
            if change.started:
                self.started.setdefault(alarm_id, set()).add(panel_id)
            if change.stopped:
                self.stopped.setdefault(alarm_id, set()).add(panel_id)
            self._cond.notify_all()

    def wait(self, which: str, alarm_id: str, count: int, timeout: float) -> set[str]:
        """Block until `count` panels started (or stopped) for an alarm, or the timeout."""
        board = self.started if which == "started" else self.stopped
        with self._cond:
            self._cond.wait_for(lambda: len(board.get(alarm_id, ())) >= count, timeout)
            return set(board.get(alarm_id, ()))


@dataclass
class Tally:
    raised: int = 0
    receipted: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    neighbours_expected: int = 0
    neighbours_sounded: int = 0
    problems: int = 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_addr(preferred: str) -> str:
    """The preferred address, or a free port on the same host when it is taken."""
    import socket

    host, _, port = preferred.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
            return preferred
        except OSError:
            return f"{host}:0"


async def run_demo(options: DemoOptions, console: Console) -> int:
    """Run until Ctrl-C (or `options.alarms` alarms); returns the process exit code."""
    rng = random.Random(options.seed)
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="tenhub-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    broker_port = _free_port()
    settings = Settings(
        broker_url=None,
        embedded_broker_addr=f"127.0.0.1:{broker_port}",
        hub_client_id="tenhub-demo-hub",
        db_path=str(data_dir / "tenhub.db"),
        http_addr=_http_addr(options.http_addr),
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
        hub_task.result()  # raises the reason the hub could not start
    await hub.transport.connected.wait()

    web = f"http://127.0.0.1:{hub.http_port}"
    counts = options.registry.counts()
    console.print(f"[bold]tenhub demo[/bold]   web: [cyan]{web}[/cyan]")
    console.print(f"  health {web}/healthz · metrics {web}/metrics · alarms {web}/api/alarms")
    console.print(f"  broker: embedded, mqtt://127.0.0.1:{broker_port} · data: {data_dir}")

    board = AlertBoard()
    fleet = PanelFleet(
        options.registry, "127.0.0.1", broker_port, data_dir / "panels", on_alert=board.on_alert
    )
    await asyncio.to_thread(fleet.start)
    console.print(
        f"  fleet: {len(fleet.panels)} virtual panels online in {counts['units']} units."
        " A household raises an alarm every"
        f" {options.every_s:g} s; Ctrl-C stops.\n"
    )
    tally = Tally()
    try:
        while not stop.is_set() and (options.alarms == 0 or tally.raised < options.alarms):
            await _one_alarm(hub, options, fleet, board, tally, console, rng)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.every_s):
                    await stop.wait()
    finally:
        console.print("\nstopping…")
        await asyncio.to_thread(fleet.stop)
        hub.stop()
        await hub_task
        _summary(tally, console)
    return 1 if tally.problems else 0


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


async def _show_steps(hub: Hub, alarm_id: str, console: Console) -> None:
    """Print the ladder steps that fired for the alarm: who was told, by what."""
    for entry in await hub.alarms.timeline(alarm_id):
        if entry.entry != "step_fired" or entry.detail is None:
            continue
        by_role: dict[str, set[str]] = {}
        for r in entry.detail["recipients"]:
            by_role.setdefault(r["role"], set()).add(r["name"])
        told = ", ".join(f"{len(who)} {role.replace('_', ' ')}" for role, who in by_role.items())
        console.print(
            f"{_stamp()}  [magenta]NOTIFY[/]    step \"{entry.detail['name']}\" → {told}"
            " (SMS and calls queued in the outbox)"
        )


async def _one_alarm(
    hub: Hub,
    options: DemoOptions,
    fleet: PanelFleet,
    board: AlertBoard,
    tally: Tally,
    console: Console,
    rng: random.Random,
) -> None:
    unit = rng.choice(options.registry.units)
    household = rng.choice([h for h in unit.households if h.pin])
    panel = fleet[household.panel]
    kind = rng.choice(KINDS)
    neighbours = len(unit.households) - 1
    pending = panel.raise_alarm(kind)
    tally.raised += 1
    console.print(
        f"{_stamp()}  [bold red]ALARM[/]     {unit.id} {unit.name} · {household.id}"
        f" ({household.address}) · {kind.value}"
    )
    receipt = await asyncio.to_thread(pending.wait, 10)
    if receipt is None or receipt.status == ReceiptStatus.REJECTED or not receipt.alarm_id:
        tally.problems += 1
        console.print(f"{_stamp()}  [bold red]NO RECEIPT[/] {receipt!r}")
        return
    assert pending.first_sent_at is not None and pending.receipt_at is not None
    latency = (pending.receipt_at - pending.first_sent_at) * 1000
    tally.receipted += 1
    tally.latencies_ms.append(latency)
    alarm_id = receipt.alarm_id
    console.print(
        f"{_stamp()}  [green]RECEIPT[/]   {receipt.status.value} {alarm_id}"
        f" in {latency:.1f} ms (stored before answered)"
    )
    await _show_steps(hub, alarm_id, console)
    sounded = await asyncio.to_thread(board.wait, "started", alarm_id, neighbours, 5)
    tally.neighbours_expected += neighbours
    tally.neighbours_sounded += len(sounded)
    names = " ".join(sorted(p.removeprefix(f"p-{unit.id.removeprefix('u-')}-") for p in sounded))
    style = "yellow" if len(sounded) == neighbours else "bold red"
    console.print(
        f"{_stamp()}  [{style}]SOUNDING[/]  {len(sounded)}/{neighbours} neighbour panels"
        f" of {unit.id}: {names}"
    )
    if len(sounded) < neighbours:
        tally.problems += 1
    if rng.random() < 0.5:
        helper = rng.choice([h for h in unit.households if h.id != household.id])
        ack = await asyncio.to_thread(fleet[helper.panel].ack(alarm_id).wait, 10)
        console.print(
            f"{_stamp()}  [cyan]ACK[/]       {helper.id} ({helper.address}) answers"
            f" \"I'm coming\" → {ack.status.value if ack else 'no receipt'}"
        )
    await asyncio.sleep(min(1.5, options.every_s / 2))
    assert household.pin is not None
    cancel = await asyncio.to_thread(panel.cancel(alarm_id, household.pin).wait, 10)
    stopped = await asyncio.to_thread(board.wait, "stopped", alarm_id, neighbours, 5)
    console.print(
        f"{_stamp()}  [blue]CANCEL[/]    {household.id} cancels with its PIN →"
        f" {cancel.status.value if cancel else 'no receipt'}; {len(stopped)} buzzers stopped"
    )


def _summary(tally: Tally, console: Console) -> None:
    if not tally.raised:
        return
    median = statistics.median(tally.latencies_ms) if tally.latencies_ms else float("nan")
    worst = max(tally.latencies_ms, default=float("nan"))
    console.print(
        f"{tally.raised} alarms raised · {tally.receipted} receipted (median {median:.1f} ms,"
        f" worst {worst:.1f} ms) · neighbours sounded"
        f" {tally.neighbours_sounded}/{tally.neighbours_expected}"
    )
