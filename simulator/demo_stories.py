"""The demo's loop: every story the README tells, one after another, each announced.

A duress alarm, a panel going offline and back, a false alarm cancelled with the PIN, an
alarm the patrol answers and resolves, one nobody answers (the ladder climbs to the
police), and a storm in which a whole quarter presses at once and the per-phone rate limit
holds back what would flood the patrol's and the desk's phones.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Awaitable, Callable
from typing import Any

from devices.protocol import AlarmKind
from hub.alarms.work import Responder
from hub.registry.model import Unit
from simulator.demo_story import Raised, Stage, plural, print_step, raise_and_follow, sms_of

DEMO = Responder("user:demo", "police")  # the demo's own desk, told apart from a user's
OPEN_STATES = ("raised", "acknowledged", "on_scene")
Story = Callable[[Stage, Unit], Awaitable[None]]


def _story(stage: Stage, title: str, text: str) -> None:
    stage.tally.stories += 1
    stage.console.print()
    stage.line("STORY", "bold", f"[bold]{title}[/bold]: {text}")


def _with_pin(unit: Unit, duress: bool = False) -> Any:
    return next(h for h in unit.households if h.pin and (h.duress_pin or not duress))


async def duress(stage: Stage, unit: Unit) -> None:
    """An intruder makes the household cancel; it enters its duress PIN instead."""
    household = _with_pin(unit, duress=True)
    _story(
        stage,
        "Duress",
        f"an intruder at {household.address}, {unit.name} makes the household cancel its alarm;"
        " it enters its duress PIN",
    )
    raised = await raise_and_follow(stage, unit, household, AlarmKind.BURGLARY)
    if raised is None:
        return
    assert household.duress_pin is not None
    panel = stage.panels[household.panel]
    receipt = await asyncio.to_thread(panel.cancel(raised.alarm_id, household.duress_pin).wait, 10)
    police = await _wait_step(stage, raised.alarm_id, "duress", 5)
    stage.line(
        "DURESS",
        "bold red",
        f"the panel answers {receipt.status.value if receipt else 'nothing'}, as for a cancel;"
        " the hub tells the police at once"
        + (f" ({police})" if police else "")
        + " and the desk lists it first, marked DURESS",
    )
    stage.later(_close_later(stage, raised.alarm_id, 90, "the police desk handled the duress"))


async def offline_and_back(stage: Stage, unit: Unit) -> None:
    """A panel loses power, the desk lists it offline; power comes back."""
    household = unit.households[-1]
    panel_id = household.panel
    _story(
        stage,
        "Panel offline",
        f"the panel of {household.address} ({panel_id}) loses power, then comes back",
    )
    with stage.hub.events.subscribe() as events:
        await asyncio.to_thread(stage.panels[panel_id].power_off)
        went = await _panel_event(events, panel_id, "offline", 15)
        stage.line(
            "OFFLINE",
            "bold yellow" if went else "bold red",
            f"{panel_id} ({unit.id}, {household.address}): its Last Will tells the hub;"
            " the desk lists it under Panels offline"
            if went
            else f"{panel_id}: the hub did not hear it go",
        )
        stage.tally.problems += not went
        await asyncio.sleep(max(stage.every_s * 2, 1.0))
        fresh = await asyncio.to_thread(stage.restart_panel, panel_id)
        stage.panels[panel_id] = fresh
        back = await _panel_event(events, panel_id, "online", 15)
        stage.line(
            "ONLINE",
            "green" if back else "bold red",
            f"{panel_id} has power again: online, off the desk's list"
            if back
            else f"{panel_id}: the hub did not hear it come back",
        )
        stage.tally.problems += not back


async def false_alarm(stage: Stage, unit: Unit) -> None:
    """A neighbour comes; the household cancels with its PIN and the buzzers stop."""
    household = _with_pin(unit)
    _story(stage, "False alarm", f"{household.address} presses by mistake and cancels with its PIN")
    raised = await raise_and_follow(stage, unit, household, AlarmKind.MEDICAL)
    if raised is None:
        return
    helper = next(h for h in unit.households if h.id != household.id)
    ack = await asyncio.to_thread(stage.panels[helper.panel].ack(raised.alarm_id).wait, 10)
    stage.line(
        "ACK",
        "cyan",
        f'{helper.id} ({helper.address}) presses "I\'m coming"'
        f" → {ack.status.value if ack else 'no receipt'}",
    )
    await asyncio.sleep(min(1.5, stage.every_s / 2))
    assert household.pin is not None
    panel = stage.panels[household.panel]
    cancel = await asyncio.to_thread(panel.cancel(raised.alarm_id, household.pin).wait, 10)
    neighbours = len(unit.households) - 1
    stopped = await asyncio.to_thread(stage.board.wait, "stopped", raised.alarm_id, neighbours, 5)
    stage.line(
        "CANCEL",
        "blue",
        f"{household.id} cancels with its PIN → {cancel.status.value if cancel else 'no receipt'};"
        f" {plural(len(stopped), 'buzzer')} stopped",
    )


async def patrol_answers(stage: Stage, unit: Unit) -> None:
    """The patrol answers the SMS, goes, and resolves the alarm."""
    household = unit.households[2]
    _story(stage, "The patrol answers", f"a burglary at {household.address}; the patrol takes it")
    raised = await raise_and_follow(stage, unit, household, AlarmKind.BURGLARY)
    if raised is None:
        return
    sms = next(
        (m for m in raised.sent if m.to in _patrol_phones(stage, unit)),
        None,
    )
    if sms is None:
        stage.line("REPLY", "bold red", "no SMS reached the patrol")
        stage.tally.problems += 1
        return
    code = re.search(r"Reply (\d+)", sms.body)
    answer = await stage.gateway.reply_async(
        sms.to, code.group(1) if code else "ACK", f"{stage.hub.public_url}/twilio/sms"
    )
    said = re.sub(r"<[^>]+>", "", answer.text).strip()
    stage.line("REPLY", "cyan", f'patrol {sms.to} texts back → "{said}"')
    stage.later(_patrol_resolves(stage, raised, sms.to))


async def nobody_answers(stage: Stage, unit: Unit) -> None:
    """Nobody takes the alarm: the ladder climbs to the police desk at 60 s."""
    household = unit.households[5]
    _story(stage, "Nobody answers", f"{household.address} raises an alarm nobody takes")
    raised = await raise_and_follow(stage, unit, household, AlarmKind.MEDICAL)
    if raised is None:
        return
    stage.line(
        "OPEN",
        "bold magenta",
        f"nobody answers: the ladder climbs (police at 60 s); take it on the desk:"
        f" {stage.hub.public_url}/alarms/{raised.alarm_id}",
    )
    stage.later(_climbs(stage, raised))


async def storm(stage: Stage, units: list[Unit]) -> None:
    """A whole quarter presses at once: the per-phone limit keeps phones from flooding."""
    households = [(u, h) for u in units for h in u.households]
    limit = stage.hub.settings.sms_per_15min
    _story(
        stage,
        "Alarm storm",
        f"gas smelt across {' and '.join(u.name for u in units)}: all"
        f" {len(households)} households press at once; no phone gets more than"
        f" {limit} SMS in 15 minutes",
    )
    pending = []
    for u, h in households:  # within two seconds, as people smell it one after another
        pending.append((u, h, stage.panels[h.panel].raise_alarm(AlarmKind.GAS)))
        await asyncio.sleep(0.1)
    stage.tally.raised += len(pending)
    receipts = [await asyncio.to_thread(p.wait, 10) for _, _, p in pending]
    alarm_ids = [r.alarm_id for r in receipts if r is not None and r.alarm_id]
    stage.tally.receipted += len(alarm_ids)
    stage.line(
        "ALARMS",
        "bold red",
        f"{len(alarm_ids)}/{len(pending)} receipted; on the desk's map the quarter's units"
        " cluster, red",
    )
    queued = 0
    for alarm_id in alarm_ids:
        queued += await _queued_sms(stage, alarm_id)
    sent, held = await sms_of(stage, alarm_ids, queued)
    stage.tally.sms += len(sent)
    calls_held = 0
    for alarm_id in alarm_ids:
        notes = await stage.hub.outbox.for_alarm(alarm_id)
        calls_held += sum(1 for n in notes if n["channel"] == "voice" and n["limited_at"])
    stage.line(
        "SMS",
        "cyan",
        f"{len(sent)}/{queued} delivered, {held} held back by the per-phone rate limit"
        + (f" (and {plural(calls_held, 'call')})" if calls_held else ""),
    )
    stage.line(
        "LIMIT",
        "bold yellow",
        f"on purpose: the patrol's and the desk's phones would each get {len(alarm_ids)}"
        f" messages at once; the hub sends {limit} per phone and holds the rest (sent as the"
        " 15 minutes free up; dropped once their alarm is closed)",
    )
    await asyncio.sleep(max(stage.every_s * 2, 1.0))
    for alarm_id in alarm_ids:
        await stage.hub.actions.resolve(alarm_id, DEMO, "web", "gas main shut; all safe")
    stage.line(
        "RESOLVED",
        "green",
        f"the storm's {plural(len(alarm_ids), 'alarm')} closed by the desk: what was held"
        " back is dropped",
    )


def loop_of(units: list[Unit], storm_units: list[Unit]) -> Callable[[Stage], Awaitable[None]]:
    """One turn of the loop, each story in the next unit of the quiet ones."""
    ring = itertools.cycle(units)
    stories: list[Story] = [duress, offline_and_back, false_alarm, patrol_answers, nobody_answers]

    async def one_loop(stage: Stage) -> None:
        for story in stories:
            await story(stage, next(ring))
            await asyncio.sleep(stage.every_s)
        if storm_units:
            await storm(stage, storm_units)
            await asyncio.sleep(stage.every_s)

    return one_loop


# --- the stories' later parts and helpers ---------------------------------------------


def _patrol_phones(stage: Stage, unit: Unit) -> set[str]:
    return {m.phone for p in stage.hub.registry.patrols_in_zone(unit.zone) for m in p.members}


async def _queued_sms(stage: Stage, alarm_id: str) -> int:
    for _ in range(250):
        timeline = await stage.hub.alarms.timeline(alarm_id)
        fired = [e for e in timeline if e.entry == "step_fired" and e.detail]
        if fired:
            return sum(r["channel"] == "sms" for e in fired for r in (e.detail or {})["recipients"])
        await asyncio.sleep(0.02)
    return 0


async def _wait_step(stage: Stage, alarm_id: str, after_entry: str, timeout: float) -> str:
    """Who the step fired after `after_entry` told, in words ('' if none came)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        timeline = await stage.hub.alarms.timeline(alarm_id)
        seen = False
        for e in timeline:
            seen = seen or e.entry == after_entry
            if seen and e.entry in ("step_fired", "duress_alert") and e.detail:
                desks = sorted({r["name"] for r in e.detail["recipients"]})
                channels = sorted({r["channel"] for r in e.detail["recipients"]})
                return f"{', '.join(desks)} by {' and '.join(channels)}"
        await asyncio.sleep(0.05)
    return ""


async def _panel_event(events: asyncio.Queue, panel_id: str, state: str, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                event = await events.get()
                if event is None:
                    return False
                if (event.get("type"), event.get("panel_id"), event.get("state")) == (
                    "panel",
                    panel_id,
                    state,
                ):
                    return True
    return False


async def _patrol_resolves(stage: Stage, raised: Raised, phone: str) -> None:
    patrol = Responder(f"phone:{phone}", "patrol")
    await asyncio.sleep(4)
    await stage.hub.actions.on_scene(raised.alarm_id, patrol, "web")
    stage.line(
        "ON SCENE", "blue", f"{raised.alarm_id}: the patrol is at {raised.household.address}"
    )
    await asyncio.sleep(4)
    result = await stage.hub.actions.resolve(
        raised.alarm_id, patrol, "web", "window left open; all well"
    )
    if result.ok:
        stage.line(
            "RESOLVED", "green", f'{raised.alarm_id}: resolved by the patrol ("window left open")'
        )


async def _climbs(stage: Stage, raised: Raised) -> None:
    for _ in range(750):  # the police step is due 60 s after the alarm
        alarm = await stage.hub.alarms.get(raised.alarm_id)
        if alarm is None or alarm.state not in OPEN_STATES:
            return
        timeline = await stage.hub.alarms.timeline(raised.alarm_id)
        fired = [e for e in timeline if e.entry == "step_fired" and e.detail]
        if len(fired) > 1:
            stage.line("ESCALATED", "bold magenta", f"{raised.alarm_id}: nobody took it in 60 s")
            print_step(stage, fired[-1].detail or {})
            break
        await asyncio.sleep(0.1)
    await _close_later(stage, raised.alarm_id, 60, "closed by the demo after 2 minutes")


async def _close_later(stage: Stage, alarm_id: str, after_s: float, why: str) -> None:
    await asyncio.sleep(after_s)
    alarm = await stage.hub.alarms.get(alarm_id)
    if alarm is not None and alarm.state in OPEN_STATES:
        await stage.hub.actions.resolve(alarm_id, DEMO, "web", why)
        stage.line("RESOLVED", "green", f"{alarm_id}: {why}")


async def watch_the_web(stage: Stage) -> None:
    """Print what people do on the web pages (not the demo's own actions)."""
    with stage.hub.events.subscribe() as events:
        while (event := await events.get()) is not None:
            if event.get("type") != "alarm" or event.get("change") not in ("state", "note", "step"):
                continue
            timeline = await stage.hub.alarms.timeline(event["id"])
            last = timeline[-1] if timeline else None
            if last is None or last.channel != "web" or not (last.actor or "").startswith("user:"):
                continue
            if last.actor == DEMO.actor:
                continue
            what = last.entry.replace("_", " ")
            note = (last.detail or {}).get("note")
            stage.line(
                "WEB",
                "bold cyan",
                f"{last.actor.removeprefix('user:')} on the web: {what} {event['id']}"
                + (f' ("{note}")' if note else ""),
            )
