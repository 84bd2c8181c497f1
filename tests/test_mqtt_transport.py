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

from hub.broker.mqtt_transport import MqttTransport, NotConnected
from hub.metrics import HubMetrics
from hub.settings import BrokerAddress
from simulator.brokers import Mosquitto
from tests.mqtt_probe import MqttProbe
from tests.waiting import until


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
        BrokerAddress.parse(mosquitto.url), "tenhub-test-transport", lambda _t, _p, ack: ack(),
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

    def answer(_topic: str, _payload: bytes, ack) -> None:
        ack()
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


async def run_until_connected(transport: MqttTransport) -> asyncio.Task[None]:
    task = asyncio.create_task(transport.run())
    await asyncio.wait_for(transport.connected.wait(), 10)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_an_event_is_handed_over_again_until_the_hub_acknowledges_it(mosquitto):
    # The hub acknowledges an event only once it is committed: one it took and never
    # acknowledged (killed mid-store) must come again on the next connection, and one
    # it acknowledged must not, with nothing asked of the panel that sent it.
    seen: list[bytes] = []
    acks = []

    def take(_topic: str, payload: bytes, ack) -> None:
        seen.append(payload)
        acks.append(ack)

    transport = MqttTransport(
        BrokerAddress.parse(mosquitto.url), "tenhub-test-ack", take, HubMetrics()
    )
    probe = await asyncio.to_thread(MqttProbe, mosquitto.host, mosquitto.port, "panel", [])
    topic = "tenhub/v1/panel/p-0001-05/event"
    big = b'{"type":"alarm","seq":7,"note":"' + b"x" * 3000 + b'"}'  # length in 2 bytes
    try:
        task = await run_until_connected(transport)
        await asyncio.to_thread(probe.publish, topic, big)
        await until(lambda: seen == [big], 5)
        await stop(task)  # taken, not acknowledged: as if the hub died storing it

        task = await run_until_connected(transport)
        await until(lambda: len(seen) == 2, 5)
        assert seen == [big, big]  # handed over again by the broker alone
        acks[-1]()
        acks[-1]()  # once is what counts; a second call changes nothing
        await asyncio.to_thread(probe.publish, topic, b'{"type":"alarm","seq":8}')
        await until(lambda: len(seen) == 3, 5)
        acks[-1]()
        await asyncio.sleep(0.2)  # the PUBACKs on their way to the broker
        await stop(task)

        task = await run_until_connected(transport)
        await asyncio.sleep(1.0)  # anything unacknowledged would come again now
        await stop(task)
        assert seen == [big, big, b'{"type":"alarm","seq":8}']
    finally:
        probe.close()
