"""Hostile input against a running hub: generated garbage by the hundred thousand handed to
it in process and by the thousand through a real broker, a flood before a real alarm, ids
built to break topics. The hub answers by its rules and goes on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import topics
from devices.panel import ReferencePanel
from devices.protocol import MAX_PAYLOAD_BYTES, NO_SEQ, ReceiptStatus
from hub.registry.model import parse_registry
from tests.conftest import db_url_of
from tests.hub_thread import HubInThread
from tests.mqtt_probe import MqttProbe

# 1,000 examples of 100 messages: the 100,000 generated payloads and topics the hub must
# survive. TENHUB_FUZZ_EXAMPLES lowers or raises it.
EXAMPLES = int(os.environ.get("TENHUB_FUZZ_EXAMPLES", "1000"))
PER_EXAMPLE = 100

KNOWN = ["p-0001-01", "p-0001-02", "p-0002-05", "p-0003-10"]
CHANNELS = ["event", "event", "event", "status", "heartbeat", "receipt", "x", ""]
ODD = ["", "/", "#", "+", "\x00", "é", "p-1/#", " ", "P-1", "a" * 65, "tenhub", "v1"]
FIELDS = [
    "type",
    "seq",
    "ts",
    "kind",
    "alarm_id",
    "pin",
    "state",
    "sig",
    "battery",
    "detail",
    "condition",
    "extra",
]


def _value(rng: random.Random, depth: int = 0) -> object:
    """Any JSON value, biased to the edges: huge and negative numbers, odd text, nesting."""
    pick = rng.randrange(12)
    if pick == 0:
        return rng.choice([0, -1, 1, 2**31, 2**53, 2**53 + 1, 2**64, -(2**63)])
    if pick == 1:
        return rng.random() * rng.choice([1, 1e308, -1e-308])
    if pick == 2:
        return rng.choice([True, False, None])
    if pick == 3:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(40)))
    if pick == 4:
        return rng.choice(
            [
                "alarm",
                "cancel",
                "ack",
                "test",
                "tamper",
                "trouble",
                "fire",
                "panic",
                "online",
                "offline",
                "1234",
                "a-0",
                "p-0001-01",
            ]
        )
    if pick == 5 and depth < 4:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 6 and depth < 4:
        return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if pick == 7:
        return "x" * rng.randrange(5000)
    return rng.randrange(-10, 2**40)


def _event(rng: random.Random) -> dict:
    """Something close to a real event, then broken in a few random ways."""
    event = {
        "type": rng.choice(["alarm", "cancel", "ack", "test", "tamper", "trouble"]),
        "seq": rng.randrange(2**40),
        "ts": int(time.time() * 1000),
        "kind": rng.choice(["panic", "burglary", "fire", "medical", "gas"]),
        "alarm_id": f"a-{rng.randrange(2**64):x}",
        "pin": f"{rng.randrange(10_000):04d}",
    }
    for _ in range(rng.randrange(4)):
        field = rng.choice(FIELDS)
        if rng.random() < 0.3:
            event.pop(field, None)
        else:
            event[field] = _value(rng)
    return event


def hostile_message(rng: random.Random, known: list[str] = KNOWN) -> tuple[str, bytes]:
    """One (topic, payload) as a broken or malicious panel might send it."""
    stranger = f"p-{rng.randrange(10_000):04d}-{rng.randrange(99):02d}"
    panel = rng.choice([*known, *ODD, stranger])
    topic = f"tenhub/v1/panel/{panel}/{rng.choice(CHANNELS)}"
    if rng.random() < 0.05:
        levels = [*ODD, "tenhub", "v1", "panel"]
        topic = "/".join(rng.choice(levels) for _ in range(rng.randrange(40)))
    shape = rng.randrange(10)
    if shape < 6:
        body = json.dumps(_event(rng)).encode()
    elif shape == 6:
        body = rng.randbytes(rng.randrange(300))
    elif shape == 7:
        body = b"[" * rng.randrange(1, 6000) + b"{" * rng.randrange(100)
    elif shape == 8:
        body = json.dumps(_value(rng)).encode()
    else:
        body = json.dumps(_event(rng)).encode()[: rng.randrange(1, 60)]  # cut short
    return topic, body


class FailOnError(logging.Handler):
    """Remembers every ERROR the hub logs: an unhandled exception in a handler shows here."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def running(tmp_path_factory, registry, module_db_url):
    from tests.brokers import Mosquitto

    workdir = tmp_path_factory.mktemp("hostile")
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    running = HubInThread(
        broker.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        workdir / "hub.db",
        registry,
        db_url=module_db_url,
    )
    running.start()
    yield running, broker
    running.stop()
    broker.stop()


def event_messages_seen(hub) -> float:
    return sum(
        s.value
        for m in hub.metrics.registry.collect()
        if m.name == "tenhub_events"
        for s in m.samples
        if s.name == "tenhub_events_total"
    )


@pytest.mark.one_database  # the rules' answers; the stores run on both elsewhere
def test_a_hundred_thousand_generated_messages_in_process_are_each_answered_by_the_rules(
    running,
):
    """In process: each message is handed to the hub's ingest as its broker connection hands
    them, without the broker, so that 100,000 take seconds. The same garbage through a real
    broker, by the thousand, is the story after this one."""
    runner, _broker = running
    hub = runner.hub
    errors = FailOnError()
    logging.getLogger().addHandler(errors)
    sent_events = 0
    before = event_messages_seen(hub)

    # A seed per example, not Hypothesis's own randoms: drawing each of the 100,000
    # messages' choices through Hypothesis took ten times as long as the hub took to
    # answer them. A failing example names its seed, which replays it.
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.integers(min_value=0, max_value=2**64 - 1))
    def hub_survives(seed):
        nonlocal sent_events
        rng = random.Random(seed)
        batch = [hostile_message(rng) for _ in range(PER_EXAMPLE)]

        async def deliver():
            for t, p in batch:
                hub.ingest.on_message(t, p)

        runner.call(deliver())
        sent_events += sum(
            1
            for t, _ in batch
            if (parsed := topics.parse_panel_topic(t)) and parsed.channel == "event"
        )

    try:
        hub_survives()
        runner.call(hub.ingest.drain(timeout=60), timeout=70)
    finally:
        logging.getLogger().removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == [], "an event crashed a handler"
    # Every event was answered by the rules: accepted, duplicate or rejected, none lost.
    assert event_messages_seen(hub) - before == sent_events


# Through the broker, a few thousand: each panel id carries at most 15 events, below the
# hub's bursts for answering refusals (20) and for events (60), so every one is answered.
THROUGH_BROKER = int(os.environ.get("TENHUB_BROKER_FUZZ_MESSAGES", "3000"))
PER_PANEL_ID = 15
RECEIPTS = "tenhub/v1/panel/+/receipt"
REAL_PANEL = "p-0003-06"  # left out of the garbage, for the real alarm after it


def publishable(topic: str) -> bool:
    """Whether a client may publish on the topic at all (MQTT forbids these)."""
    return topic != "" and not any(c in topic for c in "+#\x00")


def receipt_seq(payload: bytes) -> int:
    """The seq the hub's receipt carries for this event payload: its own when readable."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return NO_SEQ
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested past reading
        return NO_SEQ
    seq = event.get("seq") if isinstance(event, dict) else None
    readable = isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= 2**53
    return seq if readable else NO_SEQ


class RawListener:
    """Every message on a topic filter, as (topic, payload bytes), whatever the bytes are."""

    def __init__(self, host: str, port: int, topic_filter: str) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-listener")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        if not subscribed.wait(10):
            raise TimeoutError(f"not subscribed to {topic_filter} after 10 s")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append((msg.topic, bytes(msg.payload)))

    def messages(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def broker_batch(seed: int, registry) -> list[tuple[str, bytes]]:
    """Generated messages for every panel of the registry and strangers, no more than
    PER_PANEL_ID events for any one panel id (the rest go to ids of their own)."""
    rng = random.Random(seed)
    known = [p for p in registry.panel_places() if p != REAL_PANEL]
    per_id: Counter[str] = Counter()
    batch = []
    while len(batch) < THROUGH_BROKER:
        topic, payload = hostile_message(rng, known)
        if not publishable(topic):
            continue
        parsed = topics.parse_panel_topic(topic)
        if parsed is not None and parsed.channel == "event":
            panel_id = parsed.panel_id
            if per_id[panel_id] >= PER_PANEL_ID:
                panel_id = f"p-more-{len(batch)}"
                topic = topics.event_topic(panel_id)
            per_id[panel_id] += 1
        batch.append((topic, payload))
    return batch


@pytest.mark.timeout(60)
def test_generated_messages_through_a_real_broker_each_get_exactly_one_receipt(
    mosquitto, tmp_path, registry, db_target
):
    seed = int(os.environ.get("TENHUB_BROKER_FUZZ_SEED", random.randrange(2**32)))
    batch = broker_batch(seed, registry)
    errors = FailOnError()
    running = HubInThread(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        registry,
        db_url=db_url_of(db_target),
    )
    running.start()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(running.stop)
        receipts = RawListener(mosquitto.host, mosquitto.port, RECEIPTS)
        cleanup.callback(receipts.close)
        sender = MqttProbe(mosquitto.host, mosquitto.port, "test-garbage", [])
        cleanup.callback(sender.close)
        logging.getLogger().addHandler(errors)
        cleanup.callback(logging.getLogger().removeHandler, errors)

        published = [sender.client.publish(t, p, qos=1) for t, p in batch]
        for info in published:
            info.wait_for_publish(30)
            assert info.is_published(), f"the broker did not take them all (seed {seed})"

        # Each event on a panel's event topic is answered on its receipt topic, once, with
        # the event's seq when it can be read. The batch also puts garbage on receipt topics
        # itself: the broker hands that back too, and it is told apart by its bytes.
        wanted: Counter[tuple[str, int]] = Counter()
        echoes: Counter[tuple[str, bytes]] = Counter()
        for t, p in batch:
            parsed = topics.parse_panel_topic(t)
            if parsed is not None and parsed.channel == "event":
                wanted[(topics.receipt_topic(parsed.panel_id), receipt_seq(p))] += 1
            elif mqtt.topic_matches_sub(RECEIPTS, t):
                echoes[(t, p)] += 1
        expected = wanted.total() + echoes.total()
        deadline = time.monotonic() + 30
        while len(came := receipts.messages()) < expected:
            assert time.monotonic() < deadline, (
                f"{len(came)} of {expected} receipts after 30 s (seed {seed})"
            )
            time.sleep(0.05)
        # A quiet moment: no receipt comes twice, nor one for a message that was not an event.
        time.sleep(0.5)
        came_all = Counter(receipts.messages())
        assert echoes - came_all == Counter(), f"the batch's own messages lost (seed {seed})"
        answered = Counter((t, json.loads(p)["seq"]) for t, p in (came_all - echoes).elements())
        assert answered == wanted, f"not one receipt each (seed {seed})"

        # The hub goes on: a real alarm afterwards is stored and answered.
        place = registry.panel_place(REAL_PANEL)
        panel = ReferencePanel(
            REAL_PANEL, mosquitto.host, mosquitto.port, state_dir=tmp_path / "panel",
            username=REAL_PANEL, household_id=place.household.id, unit_id=place.unit.id,
        )  # fmt: skip
        panel.start()
        cleanup.callback(panel.stop)
        receipt = panel.raise_alarm("fire").wait(15)
        assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED, receipt
    assert [r.getMessage() for r in errors.records] == [], f"a handler crashed (seed {seed})"


def metric_wait(hub, name: str, reason: str, reach: float, what: str, timeout: float = 30):
    """Wait until the hub's counter `name{reason}` reaches `reach`; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (value := hub.metrics.value(name, reason=reason)) < reach:
        assert time.monotonic() < deadline, f"{what}: {name} {value} < {reach} after {timeout} s"
        time.sleep(0.02)


def test_a_flood_of_garbage_does_not_hold_back_a_real_alarm(running, tmp_path, registry):
    runner, broker = running
    hub = runner.hub
    refused_before = hub.metrics.value("tenhub_rejected_total", reason="invalid_json")
    unanswered_before = hub.metrics.value("tenhub_unanswered_messages_total", reason="rate_limited")
    flooder = MqttProbe(broker.host, broker.port, "test-flooder", [])
    place = registry.panel_place("p-0002-07")
    panel = ReferencePanel(
        "p-0002-07",
        broker.host,
        broker.port,
        state_dir=tmp_path / "panel",
        username="p-0002-07",
        household_id=place.household.id,
        unit_id=place.unit.id,
    )
    panel.start()
    try:
        flood_began = time.monotonic()
        for i in range(10_000):
            last = flooder.client.publish(
                topics.event_topic("p-0002-07"), b"\x00garbage %d" % i, qos=0
            )
        pending = panel.raise_alarm("panic")
        sent = time.monotonic()
        receipt = pending.wait(5)
        took = time.monotonic() - sent
        last.wait_for_publish(10)  # the whole flood has left before the flooder goes
    finally:
        panel.stop()
        flooder.close()
    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    assert took < 1.0, f"the alarm waited {took:.2f} s behind the flood"

    # The whole flood reached the hub and was refused; the panel's topic was answered a
    # few times (a burst of 20, then 5 a second), not ten thousand times.
    metric_wait(hub, "tenhub_rejected_total", "invalid_json", refused_before + 10_000,
                "the flood refused")  # fmt: skip
    flood_lasted = time.monotonic() - flood_began
    unanswered = (
        hub.metrics.value("tenhub_unanswered_messages_total", reason="rate_limited")
        - unanswered_before
    )
    answered = 10_000 - unanswered
    # One more for a refusal counted and not yet settled as answered or not when read.
    assert 20 <= answered <= 20 + 5 * flood_lasted + 1, (answered, flood_lasted)


def answers_until(probe: MqttProbe, topic: str, done, what: str, timeout: float = 20) -> list:
    """The answers on `topic` once `done(answers)` holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done(answers := [body for t, body in list(probe.messages) if t == topic]):
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s: {answers}"
        time.sleep(0.02)
    return answers


def test_a_panel_sending_too_many_events_is_told_to_slow_down(running):
    _runner, broker = running
    chatty = "p-0003-08"  # no other story here sends as this panel
    probe = MqttProbe(broker.host, broker.port, "test-chatty", [topics.receipt_topic(chatty)])
    try:
        first = int(time.time() * 1000)  # as panels number them: above any earlier seq
        burst = range(first, first + 60)
        # All at once (not each waiting for its PUBACK), so they come faster than 20 a second.
        published = [
            probe.client.publish(
                topics.event_topic(chatty),
                json.dumps({"type": "test", "seq": seq, "ts": int(time.time() * 1000)}),
                qos=1,
            )
            for seq in range(first, first + 100)
        ]
        for info in published:
            info.wait_for_publish(10)

        def limited(answers: list) -> list:
            return [a for a in answers if a.get("error", "").startswith("rate_limited:")]

        # A burst of 60 is let through, then 20 a second; refusals are answered too.
        answers = answers_until(
            probe, topics.receipt_topic(chatty),
            lambda answers: {a["seq"] for a in answers} >= set(burst) and limited(answers),
            "the burst answered and a refusal",
        )  # fmt: skip
    finally:
        probe.close()
    by_seq = {a["seq"]: a["status"] for a in answers}
    assert [by_seq[seq] for seq in burst] == ["accepted"] * 60, "the burst of 60 let through"
    assert limited(answers)[0]["error"].startswith("rate_limited: more than 20 events a second")
    assert {a["seq"] for a in limited(answers)} <= set(range(first + 60, first + 100))
    assert all(a["status"] == "accepted" or a in limited(answers) for a in answers), answers


HOSTILE_IDS = ["p-1/#", "p-1/+", "p-1\nuser x", 'p-"1"', "P-1", "p-" + "1" * 80, "", "p 1"]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_ids_in_a_registry_are_refused_with_a_clear_error(hostile):
    text = (
        "units:\n  - id: u-1\n    name: x\n    zone: z-1\n    households:\n"
        f"      - {{id: h-1, address: a, panel: {json.dumps(hostile)}}}\n"
    )
    registry, problems = parse_registry(text, "registry.yaml")
    assert registry is None
    assert any("panel" in p.path and "not a valid id" in p.message for p in problems), problems


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_no_id_can_put_a_wildcard_into_a_topic(hostile):
    for build in (topics.event_topic, topics.receipt_topic, topics.unit_alert_topic):
        with pytest.raises(ValueError, match="not a protocol id"):
            build(hostile)
