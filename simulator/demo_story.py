"""What the demo's stories share: the console's lines, the panels' buzzers, one alarm raised
and followed to its first notifications."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from devices.panel import AlertChange, ReferencePanel
from devices.protocol import AlarmKind, ReceiptStatus
from hub.app import Hub
from hub.registry.model import Household, Unit
from simulator.twilio_gateway import TwilioGateway

ROLE_WORDS = {
    "neighbors": ("neighbour", "neighbours"),
    "key_households": ("key household", "key households"),
    "patrol": ("patrol member", "patrol members"),
    "police": ("police desk", "police desks"),
    "command": ("command post", "command posts"),
}


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 alarm`, `2 alarms`."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


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
    stories: int = 0
    background: set[asyncio.Future[Any]] = field(default_factory=set)


@dataclass
class Stage:
    """Everything a story acts on."""

    hub: Hub
    gateway: TwilioGateway
    panels: dict[str, ReferencePanel]
    board: AlertBoard
    tally: Tally
    console: Console
    every_s: float
    restart_panel: Callable[[str], ReferencePanel]  # a fresh panel of that id, connected

    def line(self, tag: str, style: str, text: str) -> None:
        """One line of the console: time, tag, what happened."""
        self.console.print(f"{time.strftime('%H:%M:%S')}  [{style}]{tag:<9}[/] {text}")

    def later(self, coro: Any) -> None:
        """Let a story go on in the background (cancelled when the demo stops)."""
        task = asyncio.ensure_future(coro)
        self.tally.background.add(task)
        task.add_done_callback(self.tally.background.discard)


@dataclass
class Raised:
    """An alarm a story raised, as far as the demo followed it."""

    alarm_id: str
    unit: Unit
    household: Household
    sent: list = field(default_factory=list)  # the gateway's messages about it
    queued: int = 0
    held: int = 0


async def raise_and_follow(
    stage: Stage, unit: Unit, household: Household, kind: AlarmKind
) -> Raised | None:
    """Raise an alarm on a household's panel and tell its first second: receipt, who was
    told, which buzzers sound, which SMS went out; None when no receipt came."""
    panel = stage.panels[household.panel]
    neighbours = len(unit.households) - 1
    pending = panel.raise_alarm(kind)
    stage.tally.raised += 1
    stage.line(
        "ALARM",
        "bold red",
        f"{unit.id} {unit.name} · {household.id} ({household.address}) · {kind.value}",
    )
    receipt = await asyncio.to_thread(pending.wait, 10)
    if receipt is None or receipt.status == ReceiptStatus.REJECTED or not receipt.alarm_id:
        stage.tally.problems += 1
        stage.line("NO RECEIPT", "bold red", repr(receipt))
        return None
    assert pending.first_sent_at is not None and pending.receipt_at is not None
    latency = (pending.receipt_at - pending.first_sent_at) * 1000
    stage.tally.receipted += 1
    stage.tally.latencies_ms.append(latency)
    alarm_id = receipt.alarm_id
    stage.line(
        "RECEIPT",
        "green",
        f"{receipt.status.value} {alarm_id} in {latency:.1f} ms (stored before answered)",
    )
    raised = Raised(alarm_id, unit, household)
    raised.queued = await show_steps(stage, alarm_id)
    sounded = await asyncio.to_thread(stage.board.wait, "started", alarm_id, neighbours, 5)
    stage.tally.neighbours_expected += neighbours
    stage.tally.neighbours_sounded += len(sounded)
    names = " ".join(sorted(p.rsplit("-", 1)[-1] for p in sounded))
    stage.line(
        "SOUNDING",
        "yellow" if len(sounded) == neighbours else "bold red",
        f"{len(sounded)}/{neighbours} neighbour panels of {unit.id}: {names}",
    )
    if len(sounded) < neighbours:
        stage.tally.problems += 1
    raised.sent, raised.held = await sms_of(stage, [alarm_id], raised.queued)
    stage.tally.sms += len(raised.sent)
    patrol = patrol_sms(stage, raised)
    example = patrol or (raised.sent[0] if raised.sent else None)
    stage.line(
        "SMS",
        "cyan" if not raised.held else "bold red",
        f"{len(raised.sent)}/{raised.queued} delivered by the gateway"
        + (f", {raised.held} held back by the per-phone rate limit" if raised.held else "")
        + (f'; to {example.to}: "{example.body}"' if example else ""),
    )
    if raised.held:
        stage.tally.problems += 1  # only a storm may meet the limit, and it says so itself
    return raised


def patrol_sms(stage: Stage, raised: Raised) -> Any:
    """The first SMS about the alarm that went to a patrol member of its zone, if any."""
    registry = stage.hub.registry
    phones = {m.phone for p in registry.patrols_in_zone(raised.unit.zone) for m in p.members}
    return next((m for m in raised.sent if m.to in phones), None)


async def show_steps(stage: Stage, alarm_id: str) -> int:
    """Print the ladder steps that fired: who was told; returns how many SMS were queued."""
    # The first step is fired by the escalation engine just after the alarm is stored.
    deadline = time.monotonic() + 5
    while True:
        timeline = await stage.hub.alarms.timeline(alarm_id)
        if any(e.entry.startswith("step_") for e in timeline) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    sms = 0
    for entry in timeline:
        if entry.entry != "step_fired" or entry.detail is None:
            continue
        sms += print_step(stage, entry.detail)
    return sms


def print_step(stage: Stage, detail: dict[str, Any]) -> int:
    """One NOTIFY line for a step that fired; how many SMS it queued."""
    by_role: dict[str, set[str]] = {}
    sms = 0
    for r in detail["recipients"]:
        by_role.setdefault(r["role"], set()).add(r["name"])
        sms += r["channel"] == "sms"
    told = ", ".join(
        plural(len(who), *ROLE_WORDS.get(role, (role, role))) for role, who in by_role.items()
    )
    stage.line("NOTIFY", "magenta", f'step "{detail["name"]}" → {told}')
    return sms


async def sms_of(stage: Stage, alarm_ids: list[str], count: int) -> tuple[list, int]:
    """The SMS about these alarms at the gateway, and how many a rate limit held back."""
    deadline = time.monotonic() + 5
    while True:
        found = [m for m in stage.gateway.messages() if any(a in m.body for a in alarm_ids)]
        held = 0
        for alarm_id in alarm_ids:
            notes = await stage.hub.outbox.for_alarm(alarm_id)
            held += sum(
                1
                for n in notes
                if n["channel"] == "sms" and n["status"] == "queued" and n["limited_at"]
            )
        if len(found) + held >= count or time.monotonic() > deadline:
            return found, held
        await asyncio.sleep(0.05)


def summary(tally: Tally, console: Console) -> None:
    """One line on everything the demo did."""
    if not tally.raised:
        return
    median = statistics.median(tally.latencies_ms) if tally.latencies_ms else float("nan")
    worst = max(tally.latencies_ms, default=float("nan"))
    console.print(
        f"{plural(tally.stories, 'story', 'stories')} played · {plural(tally.raised, 'alarm')}"
        f" raised · {tally.receipted} receipted (median {median:.1f} ms, worst {worst:.1f} ms)"
        f" · neighbours sounded {tally.neighbours_sounded}/{tally.neighbours_expected}"
        f" · {plural(tally.sms, 'SMS', 'SMS')} delivered"
    )
