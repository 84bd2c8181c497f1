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
from hub.mqtt_transport import MqttTransport, NotConnected
from hub.settings import BrokerAddress
from simulator.brokers import Mosquitto
from tests.mqtt_probe import MqttProbe

pytestmark = pytest.mark.asyncio


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
    probe = await asyncio.to_thread(
        MqttProbe, mosquitto.host, mosquitto.port, "probe", [topic]
    )
    try:
        acked = transport.publish_now(topic, b'{"state":"raised"}', 1)
        await asyncio.wait_for(acked, 5)  # the broker's PUBACK
        seen = await asyncio.to_thread(probe.wait_for, topic, 1, 5.0)
        assert seen == [{"state": "raised"}]
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
