"""A unit's buzzers hear an alarm's changes in order, even when the first alert could not go.

A unit alert is published the moment its change commits (the fast path); one that fails
stays in the outbox and is retried, and an alert queued behind it waits its turn, so a
neighbour's buzzer never hears "cancelled" before "raised" and is left sounding.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from alerts.channel import OutboxMessage
from alerts.panel_channel import PanelChannel
from alerts.sender import Backoff, OutboxSender
from hub.alarms import lifecycle
from hub.alarms.outbox_store import OutboxStore
from hub.alarms.policy import DEFAULT_POLICIES
from hub.alarms.work import FAST_PATH_GRACE_MS, AlarmContext, Work
from hub.clock import ManualClock
from hub.storage.db import Database
from tests.conftest import first_step_recorded
from tests.waiting import until, within

pytestmark = pytest.mark.asyncio


class FlakyBroker:
    """Takes unit alerts while up; raises, as a lost connection does, while down."""

    def __init__(self) -> None:
        self.up = True
        self.heard: list[tuple[str, str]] = []  # (topic, state)

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if not self.up:
            raise ConnectionError("broker connection lost")
        self.heard.append((topic, json.loads(payload)["state"]))


@pytest.fixture
async def setting(db_target, registry):
    db = Database(db_target)
    await db.open()
    clock = ManualClock(1_800_000_000_000)
    broker = FlakyBroker()
    outbox = OutboxStore(db)
    sender = OutboxSender(
        outbox,
        {"panel": PanelChannel(broker.publish)},
        clock,
        backoff=Backoff(initial_ms=1_000, max_ms=1_000),
    )
    context = AlarmContext(registry, DEFAULT_POLICIES)
    yield db, clock, broker, outbox, sender, context
    await db.close()


async def raise_alarm(db, context, clock, place):
    """Store an alarm as the panel's event does; (the alarm, its transaction's Work)."""

    def work(conn):
        w = Work.begin(conn, context, clock.now_ms())
        alarm = lifecycle.raise_alarm(w, place, "burglary", clock.now_ms(), 1, fire_due=False)
        return alarm, w

    return await db.write(work)


async def fast_send(sender: OutboxSender, messages) -> None:
    done = asyncio.Event()
    sender.send_now(messages, then=lambda _all_sent: done.set())
    await within(done.wait(), "the fast sends done")


async def test_an_alert_goes_out_as_its_change_commits(setting, registry):
    db, clock, broker, outbox, sender, context = setting
    place = registry.panel_place("p-0001-01")

    _, w = await raise_alarm(db, context, clock, place)
    assert [m.channel for m in w.fast_sends] == ["panel"]
    # The sender leaves it to the fast path: nobody sends it twice.
    assert await outbox.due(clock.now_ms(), ["panel"]) == []

    await fast_send(sender, w.fast_sends)

    assert broker.heard == [("tenhub/v1/unit/u-0001/alert", "raised")]
    assert (await outbox.counts()).get("sent") == 1


async def test_cancelled_never_overtakes_a_raised_that_could_not_go(setting, registry):
    db, clock, broker, outbox, sender, context = setting
    place = registry.panel_place("p-0001-01")

    alarm, raised = await raise_alarm(db, context, clock, place)
    broker.up = False
    await fast_send(sender, raised.fast_sends)
    assert broker.heard == []

    broker.up = True  # back, but "raised" waits for its retry a second from now
    clock.advance(0.2)

    def cancel(conn):
        w = Work.begin(conn, context, clock.now_ms())
        lifecycle.cancel_with_pin(w, lifecycle.get_alarm(w, alarm.id), place, "6305")
        return w

    cancelled = await db.write(cancel)
    assert cancelled.fast_sends == [], "behind a waiting alert, it must wait its turn"
    assert await outbox.due(clock.now_ms(), ["panel"]) == []
    # Nothing can go before the retry: the sender sleeps until then instead of spinning.
    assert await outbox.next_due_at(["panel"]) > clock.now_ms()

    clock.advance(1.5)
    await sender.run_once()
    await sender.run_once()

    assert broker.heard == [
        ("tenhub/v1/unit/u-0001/alert", "raised"),
        ("tenhub/v1/unit/u-0001/alert", "cancelled"),
    ]


async def test_an_alert_still_going_out_when_its_grace_ends_is_not_sent_again(setting, registry):
    db, clock, broker, outbox, sender, context = setting
    place = registry.panel_place("p-0001-01")
    gate = asyncio.Event()

    async def slow_publish(topic: str, payload: bytes, qos: int = 1) -> None:
        await gate.wait()  # a broker slow to take it
        await broker.publish(topic, payload, qos)

    sender.channels["panel"] = PanelChannel(slow_publish)
    _, w = await raise_alarm(db, context, clock, place)
    done = asyncio.Event()
    sender.send_now(w.fast_sends, then=lambda _all_sent: done.set())
    # Past the fast path's grace the row reads as due; its send is still on its way.
    clock.advance(FAST_PATH_GRACE_MS / 1000 + 1)
    looked = asyncio.Event()
    due = outbox.due

    async def due_then_tell(*args, **kwargs):
        messages = await due(*args, **kwargs)
        looked.set()  # the look goes on at once: sends, or waits for those under way
        return messages

    outbox.due = due_then_tell
    second_look = asyncio.create_task(sender.run_once())
    await within(looked.wait(), "the second look at the outbox")
    gate.set()
    await within(done.wait(), "the first send done")
    await within(second_look, "the second look done")

    assert broker.heard == [("tenhub/v1/unit/u-0001/alert", "raised")]
    assert (await outbox.counts()).get("sent") == 1


async def test_a_cancel_right_after_the_alert_went_out_goes_out_at_once_too(setting, registry):
    db, clock, broker, _, sender, context = setting
    place = registry.panel_place("p-0001-01")
    heard = asyncio.Event()

    async def publish(topic: str, payload: bytes, qos: int = 1) -> None:
        await broker.publish(topic, payload, qos)
        heard.set()

    sender.channels["panel"] = PanelChannel(publish)
    alarm, raised = await raise_alarm(db, context, clock, place)
    sender.send_now(raised.fast_sends)
    async with asyncio.timeout(5):
        await heard.wait()  # the unit heard it; the send's record is on its way

    def cancel(conn):
        w = Work.begin(conn, context, clock.now_ms())
        lifecycle.cancel_with_pin(w, lifecycle.get_alarm(w, alarm.id), place, "6305")
        return w

    cancelled = await db.write(cancel)
    assert [m.channel for m in cancelled.fast_sends] == ["panel"], "nothing waits before it"


async def test_a_unit_alert_never_waits_behind_sms_in_flight(setting, registry):
    db, clock, broker, outbox, _, context = setting
    gateway_answers, sms_out = asyncio.Event(), asyncio.Event()

    class SlowSms:
        name, idempotent, remote = "sms", False, True

        async def send(self, message: OutboxMessage) -> str | None:
            sms_out.set()
            await gateway_answers.wait()  # a provider slow to answer
            return "SM-1"

    # One request to a provider at a time, and an SMS holding it.
    sender = OutboxSender(
        outbox, {"panel": PanelChannel(broker.publish), "sms": SlowSms()}, clock, concurrency=1
    )

    def queue_sms(conn):
        w = Work.begin(conn, context, clock.now_ms())
        w.queue_message(
            alarm_id=None, alarm_state=None, channel="sms", recipient="+15550000101",
            payload='{"text": "earlier news"}', key="sms-1",
        )  # fmt: skip
        return w

    sms = await db.write(queue_sms)
    sender.send_now(sms.fast_sends)
    await within(sms_out.wait(), "the SMS at the provider")

    _, raised = await raise_alarm(db, context, clock, registry.panel_place("p-0001-01"))
    done = asyncio.Event()
    sender.send_now(raised.fast_sends, then=lambda _all_sent: done.set())
    # The provider never answers until told to: an alert waiting behind it never goes.
    await within(done.wait(), "the unit alert sent, the SMS still unanswered")
    assert broker.heard == [("tenhub/v1/unit/u-0001/alert", "raised")]

    gateway_answers.set()
    assert await sender.drain(20) == 0
    assert (await outbox.counts()).get("sent") == 2


# -- the running hub: when the outbox sender is asked to look -------------------------------

UNIT1 = [f"p-0001-{i:02d}" for i in range(1, 11)]


class HeldUnitAlerts:
    """The hub's unit-alert channel, its sends held until released: a broker slow to
    acknowledge them."""

    name, idempotent, remote = "panel", True, False

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sent: list[str] = []  # the state of each alert handed to it, in order
        self.out = asyncio.Event()  # a send is on its way
        self.released = asyncio.Event()

    async def send(self, message: OutboxMessage) -> str | None:
        self.sent.append(json.loads(message.payload)["state"])
        self.out.set()
        await self.released.wait()
        return await self.inner.send(message)


class SenderLooks:
    """The hub's outbox sender's looks at the outbox, counted as they start and end."""

    def __init__(self, hub) -> None:
        self.started = self.ended = 0
        look = hub.sender.run_once

        async def counted() -> float | None:
            self.started += 1
            try:
                return await look()
            finally:
                self.ended += 1

        hub.sender.run_once = counted

    def idle_after(self, started: int) -> bool:
        """Whether a look began after `started` had, and none is under way now."""
        return self.started > started and self.started == self.ended


async def sender_looks_only_when_woken(hub) -> SenderLooks:
    """No safety tick: the sender looks at the outbox when woken, or when a row falls due.
    Returns once the look this wake asks for is over."""
    looks = SenderLooks(hub)
    hub.sender_runner.tick_s = 3600.0
    hub.sender_runner.wake()  # its current wait ends; the next one has no tick
    await until(lambda: looks.idle_after(0), timeout=20, message="the woken sender's look")
    return looks


async def test_a_cancel_queued_behind_an_alert_still_going_out_follows_it_at_once(
    hub, panels, monkeypatch
):
    # The fast path's grace would bring the sender's next look at "raised"'s row (and
    # so "cancelled" behind it); an hour long here, only the end of the send ahead of
    # "cancelled" can bring it within the test.
    monkeypatch.setattr("hub.alarms.work.FAST_PATH_GRACE_MS", 3_600_000)
    heard: list[tuple[str, str]] = []
    raiser = panels(UNIT1[0])[0]
    panels(UNIT1[1], on_alert=lambda c: heard.append((c.alert.alarm_id, c.alert.state.value)))
    held = HeldUnitAlerts(hub.sender.channels["panel"])
    hub.sender.channels["panel"] = held
    looks = await sender_looks_only_when_woken(hub)

    receipt = await asyncio.to_thread(raiser.raise_alarm("burglary").wait, 20)
    assert receipt is not None and receipt.status.value == "accepted"
    await within(held.out.wait(), '"raised" on its way to the unit')  # not yet out
    before = looks.started
    cancel = await asyncio.to_thread(raiser.cancel(receipt.alarm_id, "6305").wait, 20)
    assert cancel is not None and cancel.status.value == "accepted"
    # "cancelled" went the slow way, behind "raised": its commit woke the sender, which
    # found it waiting in line and sent nothing.
    await until(
        lambda: looks.idle_after(before),
        timeout=20,
        message="the sender's look after the cancel's commit",
    )
    assert held.sent == ["raised"]
    assert heard == []

    held.released.set()
    await until(lambda: len(heard) >= 2, timeout=20, message='"raised" then "cancelled" heard')
    assert heard == [(receipt.alarm_id, "raised"), (receipt.alarm_id, "cancelled")]


async def test_alerts_that_all_went_the_fast_way_cost_the_sender_no_look(hub, panels):
    raiser, *neighbours = panels(*UNIT1)
    looks = await sender_looks_only_when_woken(hub)
    runs = looks.started

    receipt = await asyncio.to_thread(raiser.raise_alarm("burglary").wait, 20)
    assert receipt is not None and receipt.status.value == "accepted"
    await first_step_recorded(hub, receipt.alarm_id, timeout=20)
    await until(
        lambda: all(receipt.alarm_id in p.sounding for p in neighbours),
        timeout=20,
        message="the nine neighbours sounding",
    )
    # A quiet period, for a look that must not come: a wake after the last send would
    # have started one by now.
    await asyncio.sleep(0.3)

    # The unit alert and the first step's messages went out the moment they committed;
    # nothing queued behind them, so there was nothing for the sender to look for.
    assert looks.started == runs
    counts = await hub.outbox.counts()
    assert counts.get("sent", 0) >= 1
