"""The hub's one MQTT connection (paho-mqtt): persistent session, acks after commit.

Fixed client id and clean session off, so events panels publish while the hub is away
are queued by the broker and delivered when it is back. Messages are acknowledged by
hand (`manual_ack`): the broker's PUBACK for a panel's event goes out only when the
handler says the event is committed, so a hub killed between reading an event and
storing it gets it again from its session. paho runs on the hub's event loop through
its external-loop API (socket callbacks, `loop_read`/`loop_write`/`loop_misc`), so every
message reaches the hub on the loop's thread, with no hop between threads. This is the
only hub module that imports paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from devices import topics
from hub.clock import Clock, SystemClock
from hub.metrics import HubMetrics
from hub.settings import BrokerAddress

logger = logging.getLogger(__name__)

Ack = Callable[[], None]
# (topic, payload, ack): the handler calls ack() once the message is handled for good
# (an event: committed, or refused and recorded). Never called: the broker hands the
# message over again on the next connection.
MessageHandler = Callable[[str, bytes, Ack], None]

_KEEPALIVE_S = 30
_CONNECT_TIMEOUT_S = 10.0
# Receipts and alerts in flight at once; paho's default of 20 throttles bursts.
_MAX_INFLIGHT = 1000
# A topic that is not UTF-8 (no broker passes one): the hub refuses it by this name.
_UNREADABLE_TOPIC = "\ufffd"


class NotConnected(ConnectionError):
    """The hub is not connected to the broker right now."""


class _Connection:
    """One paho client, one socket, driven by the event loop until the connection ends."""

    def __init__(self, transport: MqttTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self.accepted: asyncio.Future[None] = loop.create_future()  # CONNACK
        self.subscribed: asyncio.Future[None] = loop.create_future()  # SUBACK
        self.lost: asyncio.Future[None] = loop.create_future()
        self.open = False  # CONNACK received and the connection not lost
        self._subscribe_mid: int | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}  # by message id: waiting for PUBACK
        self._write_soon = False
        self._sock: Any = None
        self._reading = True
        self._misc: asyncio.TimerHandle | None = None
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=transport.client_id,
            clean_session=False,
            manual_ack=True,
        )
        address = transport.address
        if address.username is not None:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            client.tls_set_context(ssl.create_default_context(cafile=address.ca_file))
        client.connect_timeout = _CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(_MAX_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self.client = client

    # -- the event loop drives the socket ------------------------------------------

    def _on_loop(self, call: Callable[..., None], *args: Any) -> None:
        """Run call on the loop's thread: now when already there, else as soon as it can."""
        if threading.get_ident() == self._loop_thread:
            call(*args)
        else:  # paho's connect() runs in a worker thread (DNS, TCP, TLS block)
            self.loop.call_soon_threadsafe(call, *args)

    def _on_socket_open(self, _client: Any, _userdata: Any, sock: Any) -> None:
        # Nagle would hold a receipt up to 40 ms behind a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._on_loop(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        if self.client.socket() is not sock:
            return  # closed before the loop got to it
        self._sock = sock
        if self._reading:
            self.loop.add_reader(sock, self._read)
        self._misc = self.loop.call_later(1.0, self._keepalive)

    def _on_socket_close(self, _client: Any, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch, sock)

    def _unwatch(self, sock: Any) -> None:
        if self._sock is sock:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
            self._sock = None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        self._gone(NotConnected("the connection to the broker was closed"))

    def _on_socket_register_write(self, _client: Any, _userdata: Any, _sock: Any) -> None:
        self._on_loop(self._write_later)

    def _write_later(self) -> None:
        # Everything written on this pass of the loop (a receipt, its PUBACK, a unit
        # alert) goes out in one write at its end, not one system call each.
        if not self._write_soon:
            self._write_soon = True
            self.loop.call_soon(self._write)

    def _on_socket_unregister_write(self, _client: Any, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._stop_writing, sock)

    def _stop_writing(self, sock: Any) -> None:
        if self._sock is sock:
            self.loop.remove_writer(sock)

    def _write(self) -> None:
        self._write_soon = False
        sock = self._sock
        if sock is None:
            return
        self.client.loop_write()
        if self.client.want_write() and self._sock is sock:
            # The socket's buffer is full: go on when the broker has taken more.
            self.loop.add_writer(sock, self._write)

    def _read(self) -> None:
        sock = self._sock
        self.client.loop_read()
        # TLS may have decrypted more than one packet: the socket will not say so again.
        if isinstance(sock, ssl.SSLSocket) and self._sock is sock and sock.pending():
            self.loop.call_soon(self._read)

    def _keepalive(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        self.client.loop_misc()  # PINGREQ when due; closes a connection the broker left
        if self._sock is not None:
            self._misc = self.loop.call_later(1.0, self._keepalive)

    # -- paho's callbacks, on the loop's thread once connected ------------------------

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            _settle(self.accepted, ConnectionRefusedError(f"broker refused: {reason}"))
            return
        self.open = True
        _settle(self.accepted)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _props: Any) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(r) for r in reasons if r.is_failure]
        _settle(
            self.subscribed, NotConnected(f"subscription refused: {refused}") if refused else None
        )

    def _on_message(self, client: Any, _userdata: Any, message: Any) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = _UNREADABLE_TOPIC
        mid, qos = message.mid, message.qos
        acked = False

        def ack() -> None:
            nonlocal acked
            # Once, and only on the connection the message came by: on another, the same
            # id may name another message. A lost one is handed over again anyway.
            if not acked and self.open:
                acked = True
                client.ack(mid, qos)

        try:
            self.transport.on_message(topic, bytes(message.payload), ack)
        except Exception:  # never into paho: a bad message must not cut the connection
            logger.exception("message handler failed", extra={"topic": topic[:200]})
            ack()  # it would fail the same way every time it came again

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        acked = self._acks.pop(mid, None)
        if acked is not None and not acked.done():
            acked.set_result(None)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._on_loop(self._gone, NotConnected(f"disconnected from the broker: {reason}"))

    def _gone(self, exc: NotConnected) -> None:
        self.open = False
        _settle(self.accepted, exc)
        _settle(self.subscribed, exc)
        _settle(self.lost)
        # A PUBACK owed on this connection never comes: fail those waiting at once, so
        # the outbox sends them again.
        acks, self._acks = self._acks, {}
        for acked in acks.values():
            _settle(acked, NotConnected("the connection was lost before the broker acknowledged"))

    # -- what the transport asks ---------------------------------------------------

    async def connect(self) -> None:
        """Open the socket (in a worker thread: it blocks) and wait for the CONNACK."""
        address = self.transport.address
        opening = self.loop.run_in_executor(
            None, self.client.connect, address.host, address.port, _KEEPALIVE_S
        )
        try:
            await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The thread goes on: whatever it opens is closed when it is done.
            opening.add_done_callback(lambda _: self.close())
            raise
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            await self.accepted

    async def subscribe(self) -> None:
        """Subscribe to every panel's topics and wait for the SUBACK."""
        rc, mid = self.client.subscribe(list(topics.HUB_SUBSCRIPTIONS))
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnected(f"could not subscribe: {mqtt.error_string(rc)}")
        self._subscribe_mid = mid
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            await self.subscribed

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> asyncio.Future[None]:
        """Queue one message for this pass's write; the future is done at its PUBACK."""
        if not self.open:
            raise NotConnected("not connected to the broker")
        info = self.client.publish(topic, payload, qos, retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnected(f"could not publish: {mqtt.error_string(info.rc)}")
        acked: asyncio.Future[None] = self.loop.create_future()
        if qos == 0:
            acked.set_result(None)  # nothing comes back for QoS 0
        else:
            self._acks[info.mid] = acked
        return acked

    def stop_reading(self) -> None:
        """Take no more messages; publishing and acknowledging go on."""
        self._reading = False
        if self._sock is not None:
            self.loop.remove_reader(self._sock)

    def close(self) -> None:
        """Say goodbye to the broker if the socket takes it, then close; idempotent."""
        self.open = False
        if self.client.socket() is not None:
            self.client.disconnect()
            with contextlib.suppress(OSError):
                self.client.loop_write()  # writing DISCONNECT closes paho's socket
        sock = self.client.socket()
        if sock is not None:  # the DISCONNECT did not fit: close without it
            self._unwatch(sock)
            sock.close()
        self._gone(NotConnected("the connection was closed"))


def _settle(future: asyncio.Future[None], exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
        future.exception()  # retrieved: nobody may be waiting for this one


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
        self._connection: _Connection | None = None
        self._reading = True

    async def run(self) -> None:
        """Stay connected until cancelled: connect, subscribe, read; on loss, back off and retry."""
        delay = self.reconnect_initial_s
        loop = asyncio.get_running_loop()
        while True:
            connection = _Connection(self, loop)
            if not self._reading:
                connection.stop_reading()
            # Publishing from the broker's CONNACK on: with the session kept, it hands over
            # the events queued while the hub was away at once, before the subscription
            # below is confirmed, and their receipts must go out.
            self._connection = connection
            try:
                await connection.connect()
                await connection.subscribe()
                self.connected_at = self.clock.now_ms()
                self.connected.set()
                self.metrics.broker_connected.set(1)
                self.metrics.broker_connects.inc()
                logger.info(
                    "connected to broker",
                    extra={"broker": self.address.display(), "client_id": self.client_id},
                )
                delay = self.reconnect_initial_s
                await connection.lost
                raise NotConnected("the connection to the broker was lost")
            except OSError as exc:  # NotConnected, TimeoutError and ssl.SSLError among them
                logger.warning(
                    "broker connection lost; reconnecting",
                    extra={"broker": self.address.display(), "error": str(exc), "retry_s": delay},
                )
            finally:
                self._connection = None
                connection.close()
                self.connected_at = None
                self.connected.clear()
                self.metrics.broker_connected.set(0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    def stop_reading(self) -> None:
        """Take no more messages, so those taken can be finished and acknowledged before
        the connection is closed (by cancelling run()); what the broker still holds, it
        hands to the next connection."""
        self._reading = False
        if self._connection is not None:
            self._connection.stop_reading()

    def publish_now(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,
    ) -> asyncio.Future[None]:
        """Hand a message to the connection at once; the future is done at the broker's PUBACK.

        Raises NotConnected at once when offline; the future fails with NotConnected
        when the connection is lost first, or no PUBACK came within `timeout` seconds.
        Only on the event loop's thread.
        """
        connection = self._connection
        if connection is None:
            raise NotConnected("not connected to the broker")
        acked = connection.publish(topic, payload, qos, retain)
        if not acked.done():
            expiry = connection.loop.call_later(timeout, _expire, acked)
            acked.add_done_callback(lambda _: expiry.cancel())
        return acked


def _expire(acked: asyncio.Future[None]) -> None:
    if not acked.done():
        acked.set_exception(NotConnected("the broker did not acknowledge in time"))
