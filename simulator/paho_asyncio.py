"""paho-mqtt's client on the running asyncio loop, through paho's external-loop API.

One connection is one paho `Client` whose socket the loop watches (`add_reader`, and
`add_writer` only while paho has bytes it could not send), plus one loop timer for
paho's keepalive (`loop_misc`): no thread and no task per connection, so ten thousand
fit in one process. The TCP connect is the one blocking call paho makes, so it runs in
the loop's thread pool. Reconnects follow a jittered backoff; paho resends what the
broker has not acknowledged, after the subscriptions are renewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

logger = logging.getLogger(__name__)

Message = mqtt.MQTTMessage
MessageCallback = Callable[[mqtt.MQTTMessage], None]


class MqttError(Exception):
    """Something went wrong on an MQTT connection."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a refusal (paho's reason, e.g. 'Not authorized')."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"broker refused the connection: {reason}")


class SubscribeRefused(MqttError):
    """The broker refused some topic filters of a SUBSCRIBE."""

    def __init__(self, filters: list[str]) -> None:
        self.filters = filters
        super().__init__(f"broker refused the subscriptions: {', '.join(filters)}")


class ConnectionLost(MqttError):
    """The connection ended (or the client was closed) before the answer came."""


class AsyncPahoClient:
    """One MQTT 3.1.1 connection that reconnects by itself until `disconnect()` or `abort()`.

    Every method is called from the loop's thread; callbacks run there too and must not block.
    """

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = True,
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        on_message: MessageCallback | None = None,
        on_reconnect: Callable[[bool], None] | None = None,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive = keepalive
        # on_message runs on the loop as the message is read. Without it, messages queue.
        self.messages: asyncio.Queue[mqtt.MQTTMessage] | None = (
            None if on_message else asyncio.Queue()
        )
        self._on_message = on_message
        self.on_reconnect = on_reconnect  # (session_present), after renewing subscriptions
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._connected = False
        self._running = False  # connected once and not closed: reconnect when the link drops
        self._closing = False
        self._sock: Any = None
        self._fd = -1
        self._writer_added = False
        self._reading = False
        self._flush_due = False
        self._misc_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._attempt = 0
        self._connack: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._sub_waiters: dict[int, tuple[list[str], asyncio.Future[list[int]] | None]] = {}
        self._subscriptions: dict[str, int] = {}

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(*will)
        client.connect_timeout = connect_timeout_s
        client.max_inflight_messages_set(0)  # no cap: a panel's QoS 1 go out as it sends them
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        # on_publish is set only while someone waits: paho builds a reason code and
        # properties for every call, a QoS 0 heartbeat included.
        client.on_message = self._on_paho_message
        client.connect_async(host, port, keepalive)
        self.client = client

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def unacknowledged(self) -> int:
        """QoS 1 publishes awaited with `publish(wait=True)` the broker has not acknowledged."""
        return len(self._waiters)

    def socket(self) -> Any:
        """The connection's socket while one is open (paho's `socket()`), else None."""
        return self.client.socket()

    async def connect(self) -> bool:
        """Connect (returns session_present), or raise ConnectRefused, OSError or TimeoutError."""
        if self._running:
            raise RuntimeError(f"client {self.client_id} is already connected")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        self._connack = self._loop.create_future()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._open()
                session_present = await self._connack
        except BaseException:
            self._closing = True
            self._drop_socket()
            raise
        finally:
            self._connack = None
        self._running = True
        self._schedule_misc()
        return session_present

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> int | None:
        """Send; QoS 1 is kept until PUBACK (sent again on reconnect); QoS 0 offline is lost."""
        if qos == 0 and not self._connected:
            return None
        info = self.client.publish(topic, payload, qos, retain)
        return info.mid if qos else None

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> int | None:
        """Publish; with wait, return only once the broker acknowledged it (across reconnects)."""
        if not wait or qos == 0:
            return self.publish_nowait(topic, payload, qos, retain)
        self.client.on_publish = self._on_publish
        mid = self.publish_nowait(topic, payload, qos, retain)
        assert mid is not None
        future = asyncio.get_running_loop().create_future()
        self._waiters[mid] = future
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            self._waiters.pop(mid, None)
            if not self._waiters:
                self.client.on_publish = None
        return mid

    async def subscribe(
        self, filters: Iterable[tuple[str, int]], timeout: float | None = 10.0
    ) -> list[int]:
        """Subscribe (renewed on every reconnect); returns granted QoS; SubscribeRefused if any."""
        wanted = list(filters)
        self._subscriptions.update(wanted)
        if not self._connected:
            raise ConnectionLost(f"client {self.client_id} is not connected")
        future = asyncio.get_running_loop().create_future()
        self._send_subscribe(wanted, future)
        async with asyncio.timeout(timeout):
            return await future

    async def disconnect(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT and close: the broker drops the Last Will; no reconnect after this."""
        self._closing = True
        self._stop_timers()
        await self._settle_reconnect()
        if self._connected and self._sock is not None:
            self._closed = asyncio.get_running_loop().create_future()
            self.client.disconnect()  # paho closes the socket once DISCONNECT is written
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._closed
        self._drop_socket()
        self._fail_waiters()

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker publishes the Last Will."""
        self._closing = True
        self._stop_timers()
        await self._settle_reconnect()
        self._drop_socket()
        self._fail_waiters()

    async def _settle_reconnect(self) -> None:
        # Not cancelled: its thread would open a socket nobody closes. Seeing _closing, it
        # drops that socket itself.
        if self._reconnecting is not None:
            await asyncio.wait([self._reconnecting], timeout=self.connect_timeout_s + 1)

    # -- connection ----------------------------------------------------------------------

    async def _open(self) -> None:
        """Open the socket and send CONNECT (in a thread: paho's TCP connect blocks)."""
        opening = asyncio.ensure_future(asyncio.to_thread(self.client.reconnect))
        try:
            await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Timed out or cancelled: the thread still finishes, and its socket must not
            # stay open unread (the broker would keep it as this client's connection).
            opening.add_done_callback(self._drop_after_thread)
            raise
        sock = self.client.socket()
        if sock is None:
            raise ConnectionLost(f"client {self.client_id}: the socket closed as it opened")
        if self._closing:
            self._drop_socket()
            raise ConnectionLost(f"client {self.client_id} was closed while connecting")
        assert self._loop is not None
        self._sock = sock
        # By descriptor: asyncio looks a socket object up by a failed lookup whose
        # message holds the socket's repr, a measurable cost at ten thousand connects.
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        self._flush()  # the CONNECT paho queued in the thread

    def _drop_after_thread(self, opening: asyncio.Future[Any]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self._drop_socket()

    def _on_socket_open(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        # In the connect thread. Nagle would hold a small publish up to 40 ms behind a
        # delayed ACK, and paho leaves it on.
        with contextlib.suppress(OSError, AttributeError):  # not TCP (unix socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock is self._sock:
            self._loop.remove_reader(self._fd)
            if self._writer_added:
                self._loop.remove_writer(self._fd)
            self._writer_added = False
            self._sock = None
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags, reason: Any, _p: Any
    ) -> None:
        if reason.is_failure:
            self._refused(str(reason))
            return
        self._connected = True
        self._attempt = 0
        if self._connack is not None:  # the first connect
            if not self._connack.done():
                self._connack.set_result(flags.session_present)
            return
        # Subscriptions first: paho resends unacknowledged publishes after this callback,
        # and the broker handles SUBSCRIBE first, so replies find the subscription.
        if self._subscriptions:
            self._send_subscribe(list(self._subscriptions.items()), None)
        self.reconnects += 1
        if self.on_reconnect is not None:
            try:
                self.on_reconnect(flags.session_present)
            except Exception:
                logger.exception(
                    "on_reconnect callback failed", extra={"client_id": self.client_id}
                )

    def _refused(self, reason: str) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectRefused(reason))
            return
        # Revoked credentials will not come back by themselves: say so louder.
        logger.warning(
            "mqtt reconnect refused", extra={"client_id": self.client_id, "reason": reason}
        )

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _p: Any
    ) -> None:
        was_connected, self._connected = self._connected, False
        for _filters, future in self._sub_waiters.values():
            if future is not None and not future.done():
                future.set_exception(ConnectionLost("connection lost before SUBACK"))
        self._sub_waiters.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionLost(f"connection closed: {reason}"))
        if self._closing or not self._running:
            return
        if was_connected:
            logger.warning(
                "mqtt connection lost", extra={"client_id": self.client_id, "reason": str(reason)}
            )
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._closing or self._loop is None or self._retry_timer is not None:
            return
        # Jittered, so that a fleet does not stampede a broker that has just restarted.
        base = min(self.reconnect_initial_s * 2 ** min(self._attempt, 30), self.reconnect_max_s)
        self._attempt += 1
        self._retry_timer = self._loop.call_later(
            base * random.uniform(0.5, 1.0), self._start_reconnect
        )

    def _start_reconnect(self) -> None:
        self._retry_timer = None
        if self._closing or self._reconnecting is not None:
            return
        assert self._loop is not None
        self._reconnecting = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self._open()
        except (OSError, TimeoutError, MqttError) as exc:
            logger.debug(
                "mqtt reconnect failed",
                extra={"client_id": self.client_id, "attempt": self._attempt, "error": repr(exc)},
            )
            self._drop_socket()
            self._schedule_reconnect()
        finally:
            self._reconnecting = None
        # A broker that accepts TCP and never answers CONNACK: paho's keepalive gives up.

    def _drop_socket(self) -> None:
        """Close the socket without DISCONNECT (the broker publishes the Will)."""
        sock = self.client.socket()
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        # paho reads what was left and the end of the stream, closes its socket and calls
        # on_disconnect. Bounded: a stream that is shut down ends.
        for _ in range(10_000):
            if self.client.socket() is not sock:
                return
            self.client.loop_read()

    def _stop_timers(self) -> None:
        for timer in (self._misc_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        self._misc_timer = self._retry_timer = None

    def _fail_waiters(self) -> None:
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"client {self.client_id} was closed"))

    # -- the loop drives paho ------------------------------------------------------------

    def _readable(self) -> None:
        self._reading = True
        try:
            self.client.loop_read()
        finally:
            self._reading = False
        if self._flush_due:  # PUBACKs and replies queued while reading
            self._flush()

    def _on_register_write(self, _client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        if threading.get_ident() != self._loop_thread:
            return  # the connect thread's CONNECT: _open flushes it on the loop
        if self._reading:
            self._flush_due = True  # written once the read is done, together
            return
        # Written now, as paho itself does without an external loop: no loop turn is lost.
        self._flush()

    def _flush(self) -> None:
        self._flush_due = False
        sock = self._sock
        if sock is None:
            return
        self.client.loop_write()
        if self.client.want_write() and not self._writer_added and self._sock is sock:
            assert self._loop is not None
            self._loop.add_writer(self._fd, self.client.loop_write)  # the socket's buffer is full
            self._writer_added = True

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        if self._writer_added and self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._writer_added = False

    def _schedule_misc(self) -> None:
        assert self._loop is not None
        # A quarter keepalive: paho pings within 1.25 keepalives of silence, before the
        # broker's 1.5; spread at random, so a fleet's timers do not fire together.
        period = max(self.keepalive / 4, 1.0)
        self._misc_timer = self._loop.call_later(
            period * random.uniform(0.5, 1.0), self._misc_tick, period
        )

    def _misc_tick(self, period: float) -> None:
        self.client.loop_misc()
        if not self._closing:
            assert self._loop is not None
            self._misc_timer = self._loop.call_later(period, self._misc_tick, period)

    # -- messages ------------------------------------------------------------------------

    def _on_paho_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            try:
                self._on_message(msg)
            except Exception:
                # Still acknowledged: a message that breaks the callback would break it again.
                logger.exception("on_message callback failed", extra={"client_id": self.client_id})
        elif self.messages is not None:
            self.messages.put_nowait(msg)

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _rc: Any, _p: Any
    ) -> None:
        future = self._waiters.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _send_subscribe(
        self, filters: list[tuple[str, int]], future: asyncio.Future[list[int]] | None
    ) -> None:
        result, mid = self.client.subscribe(filters)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            if future is not None:
                future.set_exception(
                    ConnectionLost(f"subscribe failed: {mqtt.error_string(result)}")
                )
            return
        self._sub_waiters[mid] = ([f for f, _ in filters], future)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: list[Any], _p: Any
    ) -> None:
        filters, future = self._sub_waiters.pop(mid, ([], None))
        refused = [f for f, r in zip(filters, reasons, strict=False) if r.is_failure]
        for topic_filter in refused:
            self._subscriptions.pop(topic_filter, None)
        if refused:
            logger.warning(
                "broker refused subscriptions",
                extra={"client_id": self.client_id, "filters": refused},
            )
        if future is not None and not future.done():
            if refused:
                future.set_exception(SubscribeRefused(refused))
            else:
                future.set_result([r.value for r in reasons])
