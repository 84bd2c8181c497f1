"""Play a scenario against a real hub and check its expectations; a readable report.

`tenhub sim scenario FILE` exits 0 when every expectation held, 1 when one did not.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from hub.alarms.policy import format_duration
from hub.registry.model import Registry, load_registry
from simulator.scenario_checks import AlarmFacts, Facts, check
from simulator.scenario_model import Expectation, Scenario, Step, load_scenario
from simulator.scenario_world import World
from simulator.twilio_store import PlacedCall, SentMessage
from simulator.virtual_panel import PendingEvent

logger = logging.getLogger(__name__)

EXAMPLE_REGISTRY = Path(__file__).resolve().parent.parent / "config" / "registry.example.yaml"
_ALARM_IN_SMS = re.compile(r"Alarm (a-[0-9a-z]+)")
_CODE_IN_SMS = re.compile(r"Reply (\d+) to acknowledge")


@dataclass
class Raised:
    index: int
    household: str
    panel_id: str
    pending: PendingEvent
    alarm_id: str | None = None
    status: str | None = None


@dataclass
class Report:
    name: str
    lines: list[str] = field(default_factory=list)
    results: list[tuple[Expectation, bool, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.results)


def _describe(e: Expectation) -> str:
    parts = [f"at {format_duration(e.at)}"] if e.at is not None else []
    parts += [f"alarm {e.alarm}"] if e.alarm else []
    for key, value in e.model_dump(exclude_none=True).items():
        if key == "within":
            parts.append(f"within {format_duration(value)}")
        elif key not in ("alarm", "at"):
            parts.append(f"{key}: {value}")
    return ", ".join(parts)


class ScenarioRun:
    """One run of one scenario."""

    def __init__(
        self,
        scenario: Scenario,
        base: Path,
        console: Console,
        workdir: Path,
        db_url: str | None = None,
    ) -> None:
        self.scenario = scenario
        self.console = console
        registry_path = (base / scenario.registry) if scenario.registry else EXAMPLE_REGISTRY
        self.registry: Registry = load_registry(registry_path)
        policy = (base / scenario.policy) if scenario.policy else None
        self.world = World(
            workdir,
            self.registry,
            registry_path,
            speed=scenario.speed,
            heartbeat_s=scenario.heartbeat_s,
            policy_path=policy,
            unit_ids=set(scenario.units) if scenario.units else None,
            db_url=db_url,
        )
        self.raised: list[Raised] = []
        self.report = Report(scenario.name)
        self._answered: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._t0 = 0.0

    # -- time ---------------------------------------------------------------------------

    def _wall(self, hub_ms: int) -> float:
        return self._t0 + hub_ms / 1000 / self.scenario.speed

    def _stamp(self) -> str:
        hub_s = (time.monotonic() - self._t0) * self.scenario.speed
        return f"{int(hub_s // 60):02d}:{int(hub_s % 60):02d}"

    def say(self, text: str) -> None:
        line = f"[{self._stamp()}] {text}"
        self.report.lines.append(line)
        self.console.print(f"  [dim]{line[:8]}[/] {text}", markup=True, highlight=False)

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> Report:
        s = self.scenario
        self.console.print(f"[bold]{s.name}[/bold]  (hub time ×{s.speed:g})")
        if s.description:
            self.console.print(f"  {s.description.strip()}")
        await self.world.start()
        loop = asyncio.get_running_loop()
        self.world.gateway.subscribe(
            lambda record: loop.call_soon_threadsafe(self._on_phone, record)
        )
        self._t0 = time.monotonic()
        end = (s.steps[-1].at if s.steps else 0) + s.run_for
        # Steps and timed checks in one timeline; a check and a step at the same time:
        # the check looks at the world before the step.
        timeline: list[tuple[int, int, Step | Expectation]] = [
            (e.at, 0, e) for e in s.expect if e.at is not None
        ] + [(step.at, 1, step) for step in s.steps]
        timeline.sort(key=lambda item: (item[0], item[1]))
        try:
            for at, _, item in timeline:
                await asyncio.sleep(max(0.0, self._wall(at) - time.monotonic()))
                if isinstance(item, Step):
                    await self._do(item)
                else:
                    await self._check(item)
            await asyncio.sleep(max(0.0, self._wall(end) - time.monotonic()))
            facts = await self._facts()
            for expect in s.expect:
                if expect.at is None:
                    ok, found = check(expect, facts)
                    self.report.results.append((expect, ok, found))
        finally:
            for task in self._tasks:
                task.cancel()
            await self.world.stop()
        self._print_results()
        return self.report

    async def _check(self, expect: Expectation) -> None:
        ok, found = check(expect, await self._facts(wait_for_receipts=False))
        self.report.results.append((expect, ok, found))
        self.say(f"check: {_describe(expect)} → {'held' if ok else 'did NOT hold'} ({found})")

    def _print_results(self) -> None:
        for expect, ok, found in self.report.results:
            mark = "[green]✓[/]" if ok else "[bold red]✗[/]"
            self.console.print(f"  {mark} {_describe(expect)}  [dim]→ {found}[/]")
        verdict = "[green]passed[/]" if self.report.passed else "[bold red]FAILED[/]"
        held = sum(ok for _, ok, _ in self.report.results)
        self.console.print(f"  {verdict}: {held}/{len(self.report.results)} expectations held")

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- actions ------------------------------------------------------------------------

    def _panel_of(self, household: str) -> str:
        unit_id, _, household_id = household.partition("/")
        found = self.registry.household(unit_id, household_id)
        if found is None or found.panel not in self.world.fleet.panels:
            raise ValueError(f"{household} is not a household of the running fleet")
        return found.panel

    def _raise(self, household: str, panel_id: str, kind: str) -> Raised:
        pending = self.world.fleet[panel_id].raise_alarm(kind)
        raised = Raised(len(self.raised) + 1, household, panel_id, pending)
        self.raised.append(raised)

        async def receipt() -> None:
            answer = await pending.wait(120)
            if answer is not None:
                raised.alarm_id, raised.status = answer.alarm_id, answer.status.value

        self._spawn(receipt())
        return raised

    async def _alarm_id(self, index: int) -> str:
        raised = self.raised[index - 1]
        for _ in range(200):
            if raised.alarm_id:
                return raised.alarm_id
            await asyncio.sleep(0.05)
        raise RuntimeError(f"alarm {index} has no receipt yet")

    async def _do(self, step: Step) -> None:
        action = step.action
        if action == "raise_":
            r = step.raise_
            assert r is not None
            raised = self._raise(r.household, self._panel_of(r.household), r.kind)
            self.say(f"{r.household} raises a {r.kind} alarm (alarm {raised.index})")
        elif action == "storm" and step.storm:
            panels = sorted(self.world.fleet.panels)
            count = step.storm.count or max(1, round(len(panels) * (step.storm.share or 0)))
            stride = max(1, len(panels) // count)
            chosen = panels[::stride][:count]
            for panel_id in chosen:
                place = self.registry.panel_place(panel_id)
                assert place is not None
                self._raise(f"{place.unit.id}/{place.household.id}", panel_id, step.storm.kind)
            self.say(f"alarm storm: {len(chosen)} households raise {step.storm.kind} at once")
        elif action == "ack" and step.ack:
            alarm_id = await self._alarm_id(step.ack.alarm)
            self.world.fleet[self._panel_of(step.ack.household)].ack(alarm_id)
            self.say(f'{step.ack.household} presses "I\'m coming" on alarm {step.ack.alarm}')
        elif action == "cancel" and step.cancel:
            raised = self.raised[step.cancel.alarm - 1]
            unit_id, _, hh = raised.household.partition("/")
            household = self.registry.household(unit_id, hh)
            assert household is not None
            pin = {"right": household.pin, "duress": household.duress_pin}.get(
                step.cancel.pin
            ) or "0000"
            self.world.fleet[raised.panel_id].cancel(await self._alarm_id(raised.index), pin)
            self.say(f"{raised.household} enters the {step.cancel.pin} PIN on alarm {raised.index}")
        elif action == "reply" and step.reply:
            await self._reply(step.reply.role, step.reply.alarm, step.reply.text)
        elif action == "press" and step.press:
            await self._press(step.press.role, step.press.alarm, step.press.digits)
        elif action == "offline" and step.offline:
            await self.world.fleet[self._panel_of(step.offline.household)].power_off()
            self.say(f"{step.offline.household}'s panel loses power")
        elif action == "online" and step.online:
            await self.world.fleet.restart(self._panel_of(step.online.household))
            self.say(f"{step.online.household}'s panel is back")
        elif action == "broker_restart" and step.broker_restart:
            down = step.broker_restart.down_for / 1000 / self.scenario.speed
            self.say("the broker goes down")
            await self.world.restart_broker(down)
            self.say("the broker is back")
        elif action == "hub_kill" and step.hub_kill:
            down = step.hub_kill.down_for / 1000 / self.scenario.speed
            self.say("the hub is killed (kill -9)")
            await self.world.kill_hub(down)
            self.say("the hub is started again")

    async def _told(self, alarm_index: int, role: str, channel: str) -> list[str]:
        """Phones of `role` the hub told about the alarm by `channel`, in order."""
        alarm_id = await self._alarm_id(alarm_index)
        assert self.world.alarms is not None
        phones = []
        for e in await self.world.alarms.timeline(alarm_id):
            for r in (e.detail or {}).get("recipients", []) if e.entry == "step_fired" else []:
                if r["role"] == role and r["channel"] == channel and r["address"] not in phones:
                    phones.append(r["address"])
        return phones

    async def _reply(self, role: str, alarm_index: int, text: str, phone: str | None = None):
        alarm_id = await self._alarm_id(alarm_index)
        if phone is None:
            phones = await self._told(alarm_index, role, "sms")
            if not phones:
                self.say(f"no {role} phone got an SMS about alarm {alarm_index}: no reply")
                return
            phone = phones[0]
        body = text
        if text == "code":
            sms = [m for m in self.world.gateway.messages(phone) if alarm_id in m.body]
            code = _CODE_IN_SMS.search(sms[-1].body) if sms else None
            body = code.group(1) if code else "ACK"
        answer = await self.world.gateway.reply_async(
            phone, body, f"{self.world.hub.url}/twilio/sms"
        )
        said = re.sub(r"<[^>]+>", "", answer.text).strip()
        self.say(f'{role} {phone} texts "{body}" → "{said}"')

    async def _press(self, role: str, alarm_index: int, digits: str) -> None:
        phones = await self._told(alarm_index, role, "voice")
        calls = [c for p in phones for c in self.world.gateway.calls(p)]
        if not calls:
            self.say(f"no {role} phone was called about alarm {alarm_index}")
            return
        answer = await self.world.gateway.press_async(calls[0].sid, digits)
        said = re.sub(r"<[^>]+>", "", answer.text).strip()
        self.say(f'{role} {calls[0].to} presses {digits} → "{said}"')

    def _on_phone(self, record: SentMessage | PlacedCall) -> None:
        """A virtual responder's phone got an SMS: answer it as the scenario says."""
        if not isinstance(record, SentMessage):
            return
        found = _ALARM_IN_SMS.search(record.body)
        if found is None:
            return
        alarm_id = found.group(1)
        if (record.to, alarm_id) in self._answered:
            return
        self._answered.add((record.to, alarm_id))
        self._spawn(self._respond(record.to, alarm_id, time.monotonic()))

    async def _respond(self, phone: str, alarm_id: str, got_at: float) -> None:
        for _ in range(100):  # the SMS may arrive before the panel's receipt names the alarm
            index = next((r.index for r in self.raised if r.alarm_id == alarm_id), None)
            if index is not None:
                break
            await asyncio.sleep(0.05)
        else:
            return  # not an alarm this scenario raised
        for role, responder in self.scenario.responders.items():
            if responder.answer == "never" or phone not in await self._told(index, role, "sms"):
                continue
            answer_at = got_at + responder.after / 1000 / self.scenario.speed
            await asyncio.sleep(max(0.0, answer_at - time.monotonic()))
            await self._reply(
                role, index, "code" if responder.answer == "code" else "ACK", phone=phone
            )
            return

    # -- what happened ------------------------------------------------------------------

    async def _facts(self, *, wait_for_receipts: bool = True) -> Facts:
        w = self.world
        assert w.alarms is not None and w.outbox is not None and w.panels is not None
        for raised in self.raised:  # a receipt still on its way
            if raised.alarm_id is None and wait_for_receipts:
                answer = await raised.pending.wait(10)
                if answer is not None:
                    raised.alarm_id, raised.status = answer.alarm_id, answer.status.value
        alarms = []
        for r in self.raised:
            alarm = await w.alarms.get(r.alarm_id) if r.alarm_id else None
            facts = AlarmFacts(r.index, r.household, alarm, receipt_status=r.status)
            if alarm is not None:
                facts.timeline = await w.alarms.timeline(alarm.id)
                facts.steps = await w.alarms.steps(alarm.id)
                facts.notifications = await w.outbox.for_alarm(alarm.id)
                facts.buzzers = sum(1 for p in w.fleet.panels.values() if alarm.id in p.alerted_at)
            alarms.append(facts)
        panel_of, sms_of = {}, {}
        for u in self.registry.units:
            for h in u.households:
                panel_of[f"{u.id}/{h.id}"] = h.panel
                sms_of[f"{u.id}/{h.id}"] = [
                    m.body for phone in h.phones for m in w.gateway.messages(phone)
                ]
        return Facts(alarms, await w.alarms.count(), await w.panels.troubles(), panel_of, sms_of)


async def run_scenario(
    path: str | Path,
    console: Console,
    *,
    workdir: Path | None = None,
    db_url: str | None = None,
) -> Report:
    """Load, run and check one scenario file (the hub on PostgreSQL if db_url names one)."""
    scenario, base = load_scenario(path)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tenhub-scenario-"))
    return await ScenarioRun(scenario, base, console, workdir, db_url).run()
