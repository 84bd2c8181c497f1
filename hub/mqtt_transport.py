"""The hub's one MQTT connection (aiomqtt): persistent session, reconnects by itself.

Fixed client id and clean session off, so events panels publish while the hub is away
are queued by the broker and delivered when it is back. This is the only hub module
that imports aiomqtt.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices import topics
from hub.clock import Clock, SystemClock
from hub.metrics import HubMetrics
from hub.settings import BrokerAddress

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


class _RecvBuffer:
    """The socket read in large chunks; paho's small reads served from memory.

    paho reads a packet a few bytes at a time (type, length, body), one system call
    each. With 10,000 panels heartbeating that is thousands of calls a second, and each
    one lets the database thread take the GIL from the event loop.
    """

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv  # paho's own: BlockingIOError when the socket has nothing
        self._data = b""
        self._pos = 0
        self._closed = False  # the broker closed the connection: paho must see b""
        self._error: OSError | None = None  # met by fill(): paho's next read meets it

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._data):
            if self._closed:
                return b""
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            data = self._recv(_RECV_CHUNK)
            if not data:
                return data  # the broker closed the connection
            self._data, self._pos = data, 0
        start = self._pos
        self._pos = min(start + size, len(self._data))
        return self._data[start : self._pos]

    def pending(self) -> bool:
        """Whether bytes already read wait here (the socket will not say so again)."""
        return self._pos < len(self._data)

    def fill(self) -> None:
        """Read what the socket holds if nothing waits here; what goes wrong, paho meets."""
        if self._pos < len(self._data) or self._closed or self._error is not None:
            return
        try:
            data = self._recv(_RECV_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._error = exc
            return
        if data:
            self._data, self._pos = data, 0
        else:
            self._closed = True

    def take_puback(self) -> int | None:
        """The message id of the next packet if it is a whole PUBACK saying success (its
        remaining length 2, in MQTT 3.1.1 and 5 alike); None leaves it for paho."""
        data, pos = self._data, self._pos
        if len(data) - pos < 4 or data[pos] != 0x40 or data[pos + 1] != 2:
            return None
        self._pos = pos + 4
        return (data[pos + 2] << 8) | data[pos + 3]

    def take_publish(self) -> tuple[str, bytes, int, int] | None:
        """The next packet if it is a whole, well-formed PUBLISH of QoS 0 or 1 (MQTT 3.1.1):
        (topic, payload, qos, message id). None leaves it for paho, which reads anything.
        """
        data, pos = self._data, self._pos
        end = len(data)
        if end - pos < 2:
            return None
        first = data[pos]
        qos = (first >> 1) & 3
        if first >> 4 != 3 or qos > 1:  # PUBLISH, at most once or at least once
            return None
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= end or i - pos > 4:
                return None  # not all here yet, or malformed (paho says so)
            byte = data[i]
            length |= (byte & 127) << shift
            shift += 7
            i += 1
            if not byte & 128:
                break
        stop = i + length
        if stop > end or length < 2:
            return None
        topic_end = i + 2 + ((data[i] << 8) | data[i + 1])
        body = topic_end + 2 * qos  # the message id comes first under QoS 1
        if body > stop:
            return None
        mid = (data[topic_end] << 8) | data[topic_end + 1] if qos else 0
        self._pos = stop
        # A broker passes only UTF-8 topics; were one not, the hub refuses it by its name.
        return data[i + 2 : topic_end].decode("utf-8", "replace"), data[body:stop], qos, mid


class _DirectClient(aiomqtt.Client):
    """aiomqtt that hands each message straight to the hub and drains the socket per wake-up.

    Stock aiomqtt reads one packet per readiness event and passes every message through an
    asyncio queue and an iterator that waits on two futures: three event-loop rounds per
    message. In a burst (an alarm storm, a flood of garbage) a real alarm then waits behind
    all of them. Here a wake-up reads every packet already there and each message goes to
    the hub's handler at once, in arrival order; a PUBLISH is parsed here, without paho's
    per-packet machinery (with 10,000 panels heartbeating, most of the loop's reading).
    Writes made on the loop's thread go out at the end of the same pass, without a trip
    through the loop's self-pipe and epoll.
    """

    def __init__(self, *args: Any, on_message: MessageHandler, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handle = on_message
        self._loop_thread = threading.get_ident()  # built on the loop that runs it
        self._write_soon = False
        # aiomqtt logs a warning on every publish while more than 10 wait for their PUBACK;
        # in a storm hundreds do (receipts, unit alerts), and the warnings took a tenth of
        # the loop at 500 alarms/s. Publishes that fail are logged by the hub itself.
        self.pending_calls_threshold = 1 << 30
        self._acks: dict[int, asyncio.Future[None]] = {}  # by message id: waiting for PUBACK
        self._handing_over = False

    @property
    def accepted(self) -> bool:
        """Whether the broker has accepted this connection (CONNACK) and it is not lost."""
        connected = self._connected
        return (
            connected.done()
            and not connected.cancelled()
            and connected.exception() is None
            and not self._disconnected.done()
        )

    def publish_now(
        self, topic: str, payload: bytes, qos: int, retain: bool
    ) -> asyncio.Future[None]:
        """Write one message to the socket now; the future is done at the broker's PUBACK.

        Only on the loop's thread. aiomqtt's own publish is a coroutine: as a task it
        first runs a loop pass later, behind whatever else became ready (an SMS being
        built, a burst of heartbeats), and its write waits one pass more.
        """
        self._handing_over = True  # the write below is now: none scheduled for later
        try:
            info = self._client.publish(topic, payload, qos, retain)
        finally:
            self._handing_over = False
        if info.rc != MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        acked: asyncio.Future[None] = self._loop.create_future()
        self._acks[info.mid] = acked
        self._write_now(self._client, None, self._client.socket())
        if qos == 0 and info.is_published():
            self._acked(info.mid)  # nothing comes back for QoS 0: written is done
        return acked

    def fail_pending(self, exc: BaseException) -> None:
        """The connection is gone: what waits for a PUBACK on it waits for nothing."""
        acks, self._acks = self._acks, {}
        for acked in acks.values():
            if not acked.done():
                acked.set_exception(exc)

    def _acked(self, mid: int) -> None:
        acked = self._acks.pop(mid, None)
        if acked is not None and not acked.done():
            acked.set_result(None)

    def _on_publish(self, client: Any, userdata: Any, mid: int, *args: Any) -> None:
        if mid in self._acks:
            self._acked(mid)
        else:
            super()._on_publish(client, userdata, mid, *args)

    def _deliver(self, topic: str, payload: bytes) -> None:
        try:
            self._handle(topic, payload)
        except Exception:  # never into paho: a bad message must not cut the connection
            logger.exception("message handler failed", extra={"topic": topic[:200]})

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload or "").encode()
        try:
            topic = message.topic
        except UnicodeDecodeError:  # as take_publish: the hub refuses it by its name
            topic = bytes(message._topic).decode("utf-8", "replace")
        self._deliver(topic, bytes(payload))

    def _take_publish(self, client: Any, topic: str, payload: bytes, qos: int, mid: int) -> None:
        """A PUBLISH read without paho's per-packet machinery (most of the hub's reading
        time with 10,000 panels heartbeating); answered as paho answers it."""
        self._deliver(topic, payload)
        if qos == 1:
            client._send_puback(mid)

    def _take_puback(self, client: Any, mid: int) -> None:
        """A PUBACK read without paho's decoding, which makes a reason code and a
        properties object for each (two per alarm: its receipt, its unit alert);
        handled as paho handles it, so the window of messages in flight moves on."""
        with client._out_message_mutex:
            if mid in client._out_messages:
                client._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        read_one = client.loop_read
        buffer = _RecvBuffer(functools.partial(type(client)._sock_recv, client))
        client._sock_recv = buffer.recv

        def read_packet() -> Any:
            if client._in_packet["command"] == 0:  # paho is between packets
                buffer.fill()
                publish = buffer.take_publish()
                if publish is not None:
                    self._take_publish(client, *publish)
                    return MQTT_ERR_SUCCESS
                mid = buffer.take_puback()
                if mid is not None:
                    self._take_puback(client, mid)
                    return MQTT_ERR_SUCCESS
            return read_one()

        def read_burst(max_packets: int = 1) -> Any:
            rc = read_packet()
            for _ in range(_BURST - 1):
                if rc != 0 or client.socket() is None:
                    break
                if not buffer.pending():
                    ready, _, _ = select.select([sock], [], [], 0)
                    if not ready:
                        break
                rc = read_packet()
            with client._msgtime_mutex:  # paho's keepalive: the broker is alive
                client._last_bytes_received = time.monotonic()
            if rc == 0 and buffer.pending():
                # Bytes read but not handled yet: nothing would wake the loop for them.
                self._loop.call_soon(self._read_more, client)
            return rc

        client.loop_read = read_burst
        super()._on_socket_open(client, userdata, sock)

    def _read_more(self, client: Any) -> None:
        try:
            client.loop_read()
        except Exception as exc:  # as aiomqtt's own reader: the connection is broken
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != self._loop_thread:
            super()._on_socket_register_write(client, userdata, sock)  # the CONNECT
            return
        if not self._write_soon and not self._handing_over:
            self._write_soon = True
            self._loop.call_soon(self._write_now, client, userdata, sock)

    def _write_now(self, client: Any, userdata: Any, sock: Any) -> None:
        self._write_soon = False
        if sock is None:
            return  # the connection is gone; paho reports it
        try:
            client.loop_write()
        except Exception as exc:
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        if client.want_write() and client.socket() is sock:
            # The socket's buffer is full: wait until the broker takes more.
            super()._on_socket_register_write(client, userdata, sock)


# Shared by every PUBACK taken above: nothing the hub's callbacks keep or change.
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)
_BURST = 256  # packets read per wake-up at most, so other tasks still get their turn
_RECV_CHUNK = 65536


class NotConnected(ConnectionError):
    """The hub is not connected to the broker right now."""


class MqttTransport:
    """Connects, subscribes to every panel's topics, hands messages on, publishes."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        on_message: MessageHandler,
        metrics: HubMetrics,
        *,
        clock: Clock | None = None,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.on_message = on_message
        self.metrics = metrics
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.connected = asyncio.Event()
        self.clock = clock or SystemClock()
        self.connected_at: int | None = None  # hub time of the current connection, if any
        self._client: _DirectClient | None = None

    def _new_client(self) -> _DirectClient:
        return _DirectClient(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.client_id,
            clean_session=False,
            keepalive=30,
            timeout=10,
            tls_context=(
                ssl.create_default_context(cafile=self.address.ca_file)
                if self.address.tls
                else None
            ),
            # Nagle would hold a receipt up to 40 ms behind a delayed ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            # Receipts and alerts in flight at once; paho's default of 20 throttles bursts.
            max_inflight_messages=1000,
            on_message=self.on_message,
        )

    async def run(self) -> None:
        """Stay connected until cancelled: connect, subscribe, read; on loss, back off and retry."""
        delay = self.reconnect_initial_s
        while True:
            client = self._new_client()
            # Publishing from the broker's CONNACK on (see publish_now): with the session
            # kept, it hands over the events queued while the hub was away at once, before
            # the subscription below is confirmed, and their receipts must go out.
            self._client = client
            try:
                async with client:
                    await client.subscribe(list(topics.HUB_SUBSCRIPTIONS))
                    # aiomqtt waits with asyncio.wait_for, which on Python 3.11 can swallow
                    # a cancel landing as the CONNACK or SUBACK arrives: the hub stopping
                    # would then wait on this connection forever. The request still shows.
                    if (task := asyncio.current_task()) is not None and task.cancelling():
                        raise asyncio.CancelledError
                    self.connected_at = self.clock.now_ms()
                    self.connected.set()
                    self.metrics.broker_connected.set(1)
                    self.metrics.broker_connects.inc()
                    logger.info(
                        "connected to broker",
                        extra={"broker": self.address.display(), "client_id": self.client_id},
                    )
                    delay = self.reconnect_initial_s
                    # Messages go to the handler directly; this only waits for the end.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                logger.warning(
                    "broker connection lost; reconnecting",
                    extra={"broker": self.address.display(), "error": str(exc), "retry_s": delay},
                )
            finally:
                self._client = None
                # The next connection is a new client: a PUBACK owed on this one never
                # comes. Fail those waiting at once, so the outbox sends them again.
                client.fail_pending(
                    NotConnected("the connection was lost before the broker acknowledged")
                )
                self.connected_at = None
                self.connected.clear()
                self.metrics.broker_connected.set(0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    def publish_now(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,
    ) -> asyncio.Future[None]:
        """Hand a message to the socket at once; the future is done at the broker's PUBACK.

        Raises NotConnected at once when offline; the future fails with NotConnected
        when the connection is lost first, or no PUBACK came within `timeout` seconds.
        Only on the event loop's thread.
        """
        client = self._client
        if client is None or not client.accepted:
            raise NotConnected("not connected to the broker")
        try:
            acked = client.publish_now(topic, payload, qos, retain)
        except aiomqtt.MqttError as exc:
            raise NotConnected(str(exc)) from exc
        if not acked.done():
            expiry = asyncio.get_running_loop().call_later(timeout, _expire, acked)
            acked.add_done_callback(lambda _: expiry.cancel())
        return acked


def _expire(acked: asyncio.Future[None]) -> None:
    if not acked.done():
        acked.set_exception(NotConnected("the broker did not acknowledge in time"))
