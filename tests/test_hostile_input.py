"""Hostile input against a running hub: generated garbage by the hundred thousand, a flood
before a real alarm, ids built to break topics. The hub answers by its rules and goes on."""

from __future__ import annotations

import json
import logging
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import topics
from devices.panel import ReferencePanel
from devices.protocol import ReceiptStatus
from hub.registry import parse_registry
from tests.hub_thread import HubInThread
from tests.mqtt_probe import MqttProbe

# 1,000 examples of 100 messages: the 100,000 generated payloads and topics the hub must
# survive. TENHUB_FUZZ_EXAMPLES lowers or raises it.
EXAMPLES = int(os.environ.get("TENHUB_FUZZ_EXAMPLES", "1000"))
PER_EXAMPLE = 100

KNOWN = ["p-0001-01", "p-0001-02", "p-0002-05", "p-0003-10"]
CHANNELS = ["event", "event", "event", "status", "heartbeat", "receipt", "x", ""]
ODD = ["", "/", "#", "+", "\x00", "é", "p-1/#", " ", "P-1", "a" * 65, "tenhub", "v1"]
FIELDS = ["type", "seq", "ts", "kind", "alarm_id", "pin", "state", "sig", "battery",
          "detail", "condition", "extra"]


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
        return rng.choice(["alarm", "cancel", "ack", "test", "tamper", "trouble", "fire",
                           "panic", "online", "offline", "1234", "a-0", "p-0001-01"])
    if pick == 5 and depth < 4:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 6 and depth < 4:
        return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if pick == 7:
        return "x" * rng.randrange(5000)
    return rng.randrange(-10, 2**40)


def _event(rng: random.Random) -> dict:
    """Something close to a real event, then broken in a few random ways."""
    event = {"type": rng.choice(["alarm", "cancel", "ack", "test", "tamper", "trouble"]),
             "seq": rng.randrange(2**40), "ts": int(time.time() * 1000),
             "kind": rng.choice(["panic", "burglary", "fire", "medical", "gas"]),
             "alarm_id": f"a-{rng.randrange(2**64):x}", "pin": f"{rng.randrange(10_000):04d}"}
    for _ in range(rng.randrange(4)):
        field = rng.choice(FIELDS)
        if rng.random() < 0.3:
            event.pop(field, None)
        else:
            event[field] = _value(rng)
    return event


def hostile_message(rng: random.Random) -> tuple[str, bytes]:
    """One (topic, payload) as a broken or malicious panel might send it."""
    stranger = f"p-{rng.randrange(10_000):04d}-{rng.randrange(99):02d}"
    panel = rng.choice([*KNOWN, *ODD, stranger])
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
def running(tmp_path_factory, registry):
    from tests.brokers import Mosquitto

    workdir = tmp_path_factory.mktemp("hostile")
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    running = HubInThread(
        broker.url.replace("mqtt://", "mqtt://tenhub-hub@"), workdir / "hub.db", registry
    )
    running.start()
    yield running, broker
    running.stop()
    broker.stop()


def event_messages_seen(hub) -> float:
    return sum(
        s.value for m in hub.metrics.registry.collect() if m.name == "tenhub_events"
        for s in m.samples if s.name == "tenhub_events_total"
    )


def test_a_hundred_thousand_generated_messages_are_each_answered_by_the_rules(running):
    runner, _broker = running
    hub = runner.hub
    errors = FailOnError()
    logging.getLogger().addHandler(errors)
    sent_events = 0
    before = event_messages_seen(hub)

    # A seed per example, not Hypothesis's own randoms: drawing each of the 100,000
    # messages' choices through Hypothesis took ten times as long as the hub took to
    # answer them. A failing example names its seed, which replays it.
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
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
            1 for t, _ in batch
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
    assert hub.transport.connected.is_set()


def test_a_flood_of_garbage_does_not_hold_back_a_real_alarm(running, tmp_path, registry):
    runner, broker = running
    flooder = MqttProbe(broker.host, broker.port, "test-flooder", [])
    place = registry.panel_place("p-0002-07")
    panel = ReferencePanel(
        "p-0002-07", broker.host, broker.port, state_dir=tmp_path / "panel",
        username="p-0002-07", household_id=place.household.id, unit_id=place.unit.id,
    )
    panel.start()
    try:
        for i in range(10_000):
            flooder.client.publish(topics.event_topic("p-0002-07"), b"\x00garbage %d" % i, qos=0)
        pending = panel.raise_alarm("panic")
        sent = time.monotonic()
        receipt = pending.wait(5)
        took = time.monotonic() - sent
    finally:
        panel.stop()
        flooder.close()
    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    assert took < 1.0, f"the alarm waited {took:.2f} s behind the flood"
    hub = runner.hub
    assert hub.metrics.value("tenhub_unanswered_messages_total", reason="rate_limited") > 0


def test_a_panel_sending_too_many_events_is_told_to_slow_down(running):
    _runner, broker = running
    probe = MqttProbe(broker.host, broker.port, "test-chatty",
                      [topics.receipt_topic("p-0003-10")])
    try:
        first = int(time.time() * 1000)  # as panels number them: above any earlier seq
        for seq in range(first, first + 100):
            body = {"type": "test", "seq": seq, "ts": int(time.time() * 1000)}
            probe.publish(topics.event_topic("p-0003-10"), json.dumps(body))
        # A burst of 60 is let through, then 20 a second; refusals are answered too.
        answers = probe.wait_for(topics.receipt_topic("p-0003-10"), 80, timeout=5)
    finally:
        probe.close()
    limited = [a for a in answers if a.get("error", "").startswith("rate_limited:")]
    assert limited, answers
    assert limited[0]["error"].startswith("rate_limited: more than 20 events a second")


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
