"""The hub's broker connection: a publish is on the wire at once, and its acknowledgement
is never waited for in vain.

Receipts and unit alerts are handed to the socket the moment they are published; whoever
waits for the broker's PUBACK (the outbox, for a unit alert) must hear at once when the
connection is gone, so the alert is sent again, and must not wait forever on a broker
that hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.metrics import HubMetrics
from hub.mqtt_transport import MqttTransport, NotConnected, _RecvBuffer
from hub.settings import BrokerAddress
from simulator.brokers import Mosquitto
from tests.mqtt_probe import MqttProbe


@pytest.fixture
def mosquitto(tmp_path: Path):
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    if broker.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            broker.proc.send_signal(signal.SIGCONT)
    broker.stop()


@pytest.fixture
async def transport(mosquitto: Mosquitto) -> AsyncIterator[MqttTransport]:
    transport = MqttTransport(
        BrokerAddress.parse(mosquitto.url), "tenhub-test-transport", lambda _t, _p: None,
        HubMetrics(), reconnect_initial_s=0.2,
    )  # fmt: skip
    task = asyncio.create_task(transport.run())
    await asyncio.wait_for(transport.connected.wait(), 10)
    yield transport
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_publish_reaches_subscribers_and_is_acknowledged(mosquitto, transport):
    topic = "tenhub/v1/unit/u-1/alert"
    probe = await asyncio.to_thread(MqttProbe, mosquitto.host, mosquitto.port, "probe", [topic])
    try:
        acked = transport.publish_now(topic, b'{"state":"raised"}', 1)
        await asyncio.wait_for(acked, 5)  # the broker's PUBACK
        seen = await asyncio.to_thread(probe.wait_for, topic, 1, 5.0)
        assert seen == [{"state": "raised"}]
    finally:
        probe.close()


async def test_more_publishes_at_once_than_may_be_in_flight_are_each_acknowledged(
    mosquitto, transport
):
    # 1,500 at once: past the 1,000 in flight the client allows, the rest wait for
    # PUBACKs to free their places. Each acknowledgement must free one, or they stall.
    topic = "tenhub/v1/unit/u-2/alert"
    probe = await asyncio.to_thread(
        MqttProbe, mosquitto.host, mosquitto.port, "probe-burst", [topic]
    )
    try:
        acks = [transport.publish_now(topic, b'{"n":%d}' % n, 1) for n in range(1500)]
        await asyncio.wait_for(asyncio.gather(*acks), 10)
        seen = await asyncio.to_thread(probe.wait_for, topic, 1500, 10.0)
        assert [m["n"] for m in seen] == list(range(1500))
    finally:
        probe.close()


async def test_a_publish_the_broker_never_acknowledges_fails_when_the_connection_goes(
    mosquitto, transport
):
    assert mosquitto.proc is not None
    mosquitto.proc.send_signal(signal.SIGSTOP)  # the broker hangs: no PUBACK comes
    acked = transport.publish_now("tenhub/v1/unit/u-1/alert", b"{}", 1, timeout=60)
    await asyncio.sleep(0.3)
    assert not acked.done()

    mosquitto.proc.kill()  # and then it is gone: the connection is lost
    with pytest.raises(NotConnected):
        await asyncio.wait_for(acked, 10)  # at once, not after the 60 s timeout
    with pytest.raises(NotConnected):
        transport.publish_now("tenhub/v1/unit/u-1/alert", b"{}", 1)


async def test_a_publish_not_acknowledged_in_time_fails(mosquitto, transport):
    assert mosquitto.proc is not None
    mosquitto.proc.send_signal(signal.SIGSTOP)
    acked = transport.publish_now("tenhub/v1/unit/u-1/alert", b"{}", 1, timeout=0.5)
    with pytest.raises(NotConnected, match="did not acknowledge in time"):
        await asyncio.wait_for(acked, 5)


async def test_messages_queued_while_away_are_answered_the_moment_they_arrive(mosquitto):
    # With its session kept, the broker hands the hub what panels sent while it was away
    # right after the connection is accepted, before the subscription is confirmed: a
    # receipt for such an event must go out then, not be refused as "not connected".
    topic = "tenhub/v1/panel/p-0001-05/event"
    answers: list[str] = []

    def answer(_topic: str, _payload: bytes) -> None:
        try:
            transport.publish_now("tenhub/v1/panel/p-0001-05/receipt", b'{"seq":1}', 1)
        except NotConnected as exc:
            answers.append(f"refused: {exc}")
        else:
            answers.append("published")

    transport = MqttTransport(
        BrokerAddress.parse(mosquitto.url), "tenhub-test-away", answer, HubMetrics()
    )
    task = asyncio.create_task(transport.run())
    await asyncio.wait_for(transport.connected.wait(), 10)  # the session and its subscription
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    probe = await asyncio.to_thread(
        MqttProbe, mosquitto.host, mosquitto.port, "panel", ["tenhub/v1/panel/+/receipt"]
    )
    try:
        await asyncio.to_thread(probe.publish, topic, b'{"type":"alarm","seq":1}')
        task = asyncio.create_task(transport.run())
        try:
            seen = await asyncio.to_thread(
                probe.wait_for, "tenhub/v1/panel/p-0001-05/receipt", 1, 5.0
            )
            assert answers == ["published"]
            assert seen == [{"seq": 1}]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        probe.close()


async def test_a_message_taken_is_acknowledged_and_not_delivered_again(mosquitto):
    # Events are read without paho's own reader; the broker must still get its PUBACK,
    # or it would hand the same event over again at every reconnect.
    seen: list[bytes] = []
    transport = MqttTransport(
        BrokerAddress.parse(mosquitto.url), "tenhub-test-ack",
        lambda _topic, payload: seen.append(payload), HubMetrics(),
    )  # fmt: skip
    probe = await asyncio.to_thread(MqttProbe, mosquitto.host, mosquitto.port, "panel", [])
    try:
        for _round in range(2):
            task = asyncio.create_task(transport.run())
            await asyncio.wait_for(transport.connected.wait(), 10)
            if _round == 0:
                big = b'{"type":"alarm","seq":7,"note":"' + b"x" * 3000 + b'"}'  # length in 2 bytes
                await asyncio.to_thread(probe.publish, "tenhub/v1/panel/p-0001-05/event", big)
                for _ in range(50):
                    if seen:
                        break
                    await asyncio.sleep(0.1)
                assert seen == [big]
            else:
                await asyncio.sleep(1.0)  # anything unacknowledged would come again now
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert len(seen) == 1
    finally:
        probe.close()


def _publish_packet(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += payload
    length, size = b"", len(body)
    while True:
        size, digit = divmod(size, 128)
        length += bytes([digit | (128 if size else 0)])
        if not size:
            return bytes([0x30 | qos << 1]) + length + body


def buffer_of(data: bytes) -> _RecvBuffer:
    """A read buffer that has just read `data` from the socket."""
    chunks = [data]
    buffer = _RecvBuffer(lambda _n: chunks.pop() if chunks else b"")
    buffer.fill()
    return buffer


def test_the_fast_reader_takes_whole_publishes_and_leaves_everything_else_to_paho():
    beat = _publish_packet(b"tenhub/v1/panel/p-1/heartbeat", b'{"ts":1}')
    event = _publish_packet(b"tenhub/v1/panel/p-1/event", b"e" * 300, qos=1, mid=513)
    buffer = buffer_of(beat + event)
    assert buffer.take_publish() == ("tenhub/v1/panel/p-1/heartbeat", b'{"ts":1}', 0, 0)
    assert buffer.take_publish() == ("tenhub/v1/panel/p-1/event", b"e" * 300, 1, 513)
    assert buffer.take_publish() is None and not buffer.pending()

    # Not whole yet, QoS 2, or not a PUBLISH at all: paho reads it, from the same bytes.
    for data in (event[:-1], _publish_packet(b"t", b"x", qos=2, mid=1), b"\x90\x03\x00\x01\x01"):
        buffer = buffer_of(data)
        assert buffer.take_publish() is None
        assert buffer.recv(len(data)) == data
    # A topic that is not UTF-8 (no broker passes one) reaches the hub to be refused.
    buffer = buffer_of(_publish_packet(b"tenhub/\xff", b"{}"))
    assert buffer.take_publish() == ("tenhub/\ufffd", b"{}", 0, 0)


def test_the_fast_reader_takes_whole_pubacks_that_say_success_and_nothing_else():
    buffer = buffer_of(b"\x40\x02\x02\x01" + b"\x40\x02\x00\x07")
    assert (buffer.take_puback(), buffer.take_puback()) == (513, 7)
    assert buffer.take_puback() is None and not buffer.pending()

    # Half a PUBACK, one with a reason code (MQTT 5), a PUBLISH: paho reads them.
    for data in (b"\x40\x02\x02", b"\x40\x03\x00\x07\x10", _publish_packet(b"t", b"x")):
        buffer = buffer_of(data)
        assert buffer.take_puback() is None
        assert buffer.recv(len(data)) == data
