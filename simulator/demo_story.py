"""One alarm of the demo, told as it happens: raised, receipted, who was told, who answered."""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from devices.panel import AlertChange
from devices.protocol import AlarmKind, ReceiptStatus
from hub.app import Hub
from hub.registry import Registry
from hub.work import Responder
from simulator.fleet import PanelFleet
from simulator.twilio_gateway import TwilioGateway

KINDS = [AlarmKind.BURGLARY, AlarmKind.PANIC, AlarmKind.FIRE, AlarmKind.MEDICAL, AlarmKind.GAS]


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
    sms: int = 0
    problems: int = 0
    background: set[asyncio.Future[Any]] = field(default_factory=set)


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


def _line(console: Console, tag: str, style: str, text: str) -> None:
    console.print(f"{_stamp()}  [{style}]{tag:<9}[/] {text}")


async def _show_steps(hub: Hub, alarm_id: str, console: Console) -> int:
    """Print the ladder steps that fired: who was told; returns how many SMS were queued."""
    # The first step is fired by the escalation engine just after the alarm is stored.
    deadline = time.monotonic() + 5
    while True:
        timeline = await hub.alarms.timeline(alarm_id)
        if any(e.entry.startswith("step_") for e in timeline) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    sms = 0
    for entry in timeline:
        if entry.entry != "step_fired" or entry.detail is None:
            continue
        by_role: dict[str, set[str]] = {}
        for r in entry.detail["recipients"]:
            by_role.setdefault(r["role"], set()).add(r["name"])
            sms += r["channel"] == "sms"
        told = ", ".join(f"{len(who)} {role.replace('_', ' ')}" for role, who in by_role.items())
        _line(console, "NOTIFY", "magenta", f'step "{entry.detail["name"]}" → {told}')
    return sms


async def _sms_of(hub: Hub, gateway: TwilioGateway, alarm_id: str, count: int) -> tuple[list, int]:
    """The SMS about this alarm at the gateway, and how many a rate limit held back."""
    deadline = time.monotonic() + 5
    while True:
        found = [m for m in gateway.messages() if alarm_id in m.body]
        notes = await hub.outbox.for_alarm(alarm_id)
        held = sum(
            1
            for n in notes
            if n["channel"] == "sms" and n["status"] == "queued" and n["limited_at"]
        )
        if len(found) + held >= count or time.monotonic() > deadline:
            return found, held
        await asyncio.sleep(0.05)


async def one_alarm(
    hub: Hub,
    gateway: TwilioGateway,
    registry: Registry,
    fleet: PanelFleet,
    board: AlertBoard,
    tally: Tally,
    console: Console,
    rng: random.Random,
    every_s: float,
) -> None:
    """Raise one alarm somewhere and follow it to its end."""
    unit = rng.choice(registry.units)
    household = rng.choice([h for h in unit.households if h.pin])
    panel = fleet[household.panel]
    kind = rng.choice(KINDS)
    neighbours = len(unit.households) - 1
    pending = panel.raise_alarm(kind)
    tally.raised += 1
    _line(
        console,
        "ALARM",
        "bold red",
        f"{unit.id} {unit.name} · {household.id} ({household.address}) · {kind.value}",
    )
    receipt = await asyncio.to_thread(pending.wait, 10)
    if receipt is None or receipt.status == ReceiptStatus.REJECTED or not receipt.alarm_id:
        tally.problems += 1
        _line(console, "NO RECEIPT", "bold red", repr(receipt))
        return
    assert pending.first_sent_at is not None and pending.receipt_at is not None
    latency = (pending.receipt_at - pending.first_sent_at) * 1000
    tally.receipted += 1
    tally.latencies_ms.append(latency)
    alarm_id = receipt.alarm_id
    _line(
        console,
        "RECEIPT",
        "green",
        f"{receipt.status.value} {alarm_id} in {latency:.1f} ms (stored before answered)",
    )
    queued = await _show_steps(hub, alarm_id, console)
    sounded = await asyncio.to_thread(board.wait, "started", alarm_id, neighbours, 5)
    tally.neighbours_expected += neighbours
    tally.neighbours_sounded += len(sounded)
    names = " ".join(sorted(p.removeprefix(f"p-{unit.id.removeprefix('u-')}-") for p in sounded))
    _line(
        console,
        "SOUNDING",
        "yellow" if len(sounded) == neighbours else "bold red",
        f"{len(sounded)}/{neighbours} neighbour panels of {unit.id}: {names}",
    )
    if len(sounded) < neighbours:
        tally.problems += 1
    sent, held = await _sms_of(hub, gateway, alarm_id, queued)
    tally.sms += len(sent)
    patrol_phones = {m.phone for p in registry.patrols_in_zone(unit.zone) for m in p.members}
    to_patrol = [m for m in sent if m.to in patrol_phones]
    example = to_patrol[0] if to_patrol else (sent[0] if sent else None)
    _line(
        console,
        "SMS",
        "cyan",
        f"{len(sent)}/{queued} delivered by the gateway"
        + (f", {held} held back by the per-phone rate limit" if held else "")
        + (f'; to {example.to}: "{example.body}"' if example else ""),
    )
    story = tally.raised % 3
    if story == 1:  # a false alarm: a neighbour comes, the household cancels with its PIN
        helper = rng.choice([h for h in unit.households if h.id != household.id])
        ack = await asyncio.to_thread(fleet[helper.panel].ack(alarm_id).wait, 10)
        _line(
            console,
            "ACK",
            "cyan",
            f'{helper.id} ({helper.address}) presses "I\'m coming"'
            f" → {ack.status.value if ack else 'no receipt'}",
        )
        await asyncio.sleep(min(1.5, every_s / 2))
        assert household.pin is not None
        cancel = await asyncio.to_thread(panel.cancel(alarm_id, household.pin).wait, 10)
        stopped = await asyncio.to_thread(board.wait, "stopped", alarm_id, neighbours, 5)
        _line(
            console,
            "CANCEL",
            "blue",
            f"{household.id} cancels with its PIN →"
            f" {cancel.status.value if cancel else 'no receipt'}; {len(stopped)} buzzers"
            " stopped",
        )
    elif story == 2 and to_patrol:  # the patrol answers by SMS, goes, and resolves it
        code = re.search(r"Reply (\d+)", to_patrol[0].body)
        answer = await gateway.reply_async(
            to_patrol[0].to, code.group(1) if code else "ACK", f"{hub.public_url}/twilio/sms"
        )
        said = re.sub(r"<[^>]+>", "", answer.text).strip()
        _line(console, "REPLY", "cyan", f'patrol {to_patrol[0].to} texts back → "{said}"')
        later(_patrol_resolves(hub, alarm_id, to_patrol[0].to, console), tally)
    else:  # nobody answers: left for the desk, where its ladder counts down
        _line(
            console,
            "OPEN",
            "bold magenta",
            f"nobody answers: the ladder climbs (police at 60 s); take it on the desk:"
            f" {hub.public_url}/alarms/{alarm_id}",
        )
        later(_close_if_still_open(hub, alarm_id, console), tally)


async def _patrol_resolves(hub: Hub, alarm_id: str, phone: str, console: Console) -> None:
    patrol = Responder(f"phone:{phone}", "patrol")
    await asyncio.sleep(4)
    await hub.actions.on_scene(alarm_id, patrol, "web")
    await asyncio.sleep(4)
    result = await hub.actions.resolve(alarm_id, patrol, "web", "window left open; all well")
    if result.ok:
        _line(
            console,
            "RESOLVED",
            "green",
            f'{alarm_id}: the patrol was on scene and resolved it ("window left open")',
        )


async def _close_if_still_open(hub: Hub, alarm_id: str, console: Console) -> None:
    await asyncio.sleep(120)
    alarm = await hub.alarms.get(alarm_id)
    if alarm is not None and alarm.state in ("raised", "acknowledged", "on_scene"):
        desk = Responder("user:demo", "police")
        await hub.actions.resolve(alarm_id, desk, "web", "closed by the demo after 2 minutes")
        _line(console, "RESOLVED", "green", f"{alarm_id}: closed by the demo after 2 minutes")


def later(coro: Any, tally: Tally) -> None:
    """Let a story go on in the background (cancelled when the demo stops)."""
    task = asyncio.ensure_future(coro)
    tally.background.add(task)
    task.add_done_callback(tally.background.discard)


def summary(tally: Tally, console: Console) -> None:
    """One line on everything the demo did."""
    if not tally.raised:
        return
    median = statistics.median(tally.latencies_ms) if tally.latencies_ms else float("nan")
    worst = max(tally.latencies_ms, default=float("nan"))
    console.print(
        f"{tally.raised} alarms raised · {tally.receipted} receipted (median {median:.1f} ms,"
        f" worst {worst:.1f} ms) · neighbours sounded"
        f" {tally.neighbours_sounded}/{tally.neighbours_expected} · {tally.sms} SMS delivered"
    )
