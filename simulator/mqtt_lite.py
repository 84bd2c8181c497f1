"""A small MQTT 3.1.1 client on asyncio streams: what an alarm panel needs, 10,000 to a process.

One connection is one `MqttClient` and one asyncio task (it reads, and reconnects when the
connection drops); keepalive runs on loop timers, so there is no thread and no second task.
QoS 0 and 1 only: panels never need QoS 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# First byte of each control packet (type in the high nibble, fixed flags in the low one).
CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
_DUP = 0x08

CONNACK_RETURN_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
MAX_REMAINING_LENGTH = 268_435_455
MAX_PACKET_ID = 0xFFFF
SUBACK_FAILURE = 0x80


class MqttError(Exception):
    """Something went wrong on an MQTT connection."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a non-zero return code."""

    def __init__(self, return_code: int) -> None:
        self.return_code = return_code
        name = CONNACK_RETURN_CODES.get(return_code, "unknown return code")
        super().__init__(f"broker refused the connection: return code {return_code} ({name})")


class SubscribeRefused(MqttError):
    """The broker refused some topic filters of a SUBSCRIBE."""

    def __init__(self, filters: list[str]) -> None:
        self.filters = filters
        super().__init__(f"broker refused the subscriptions: {', '.join(filters)}")


class ConnectionLost(MqttError):
    """The connection ended (or the client was closed) before the answer came."""


class MalformedPacket(MqttError):
    """The broker sent bytes that are not a valid MQTT 3.1.1 packet for a client."""


@dataclass(frozen=True, slots=True)
class Message:
    """A PUBLISH received from the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Will:
    """The Last Will the broker publishes when the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


# --- encoding ---------------------------------------------------------------------------


def encode_length(n: int) -> bytes:
    """MQTT's variable-length integer: 7 bits a byte, high bit set while more follow."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} is out of range")
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(
            f"MQTT strings and binary fields hold at most 65535 bytes, not {len(data)}"
        )
    return struct.pack("!H", len(data)) + data


def encode_string(text: str) -> bytes:
    """A UTF-8 string with its 2-byte length; U+0000 and lone surrogates are refused."""
    if "\x00" in text:
        raise ValueError("MQTT strings must not contain U+0000")
    return _binary(text.encode("utf-8"))  # strict: a lone surrogate raises


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_length(len(body)) + body


def _check_topic_name(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise ValueError(f"{topic!r} is not a topic name to publish to")


def _check_filter(topic_filter: str, qos: int) -> None:
    if not topic_filter:
        raise ValueError("a topic filter must not be empty")
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos} is not supported (0 or 1)")


def connect_packet(
    client_id: str,
    *,
    clean_session: bool,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
) -> bytes:
    """The CONNECT packet of MQTT 3.1.1 (protocol level 4)."""
    if password is not None and username is None:
        raise ValueError("MQTT 3.1.1 allows a password only with a user name")
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError(f"keepalive {keepalive} is out of range")
    flags = 0x02 if clean_session else 0
    payload = encode_string(client_id)
    if will is not None:
        _check_topic_name(will.topic)
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += encode_string(will.topic) + _binary(will.payload)
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
    if password is not None:
        flags |= 0x40
        payload += _binary(password.encode("utf-8"))
    header = encode_string("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive)
    return _packet(CONNECT, header + payload)


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int = 0) -> bytes:
    """A PUBLISH packet; packet_id only for QoS 1."""
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos} is not supported (0 or 1)")
    _check_topic_name(topic)
    body = encode_string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return _packet(PUBLISH | (qos << 1) | int(retain), body)


def _take_string(body: bytes, offset: int) -> tuple[str, int]:
    if offset + 2 > len(body):
        raise MalformedPacket("string length is cut short")
    (length,) = struct.unpack_from("!H", body, offset)
    end = offset + 2 + length
    if end > len(body):
        raise MalformedPacket("string is cut short")
    try:
        return body[offset + 2 : end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise MalformedPacket("string is not UTF-8") from None


async def read_packet(reader: asyncio.StreamReader, max_bytes: int) -> tuple[int, bytes]:
    """Read one whole packet: (first byte, body); EOF mid-packet raises IncompleteReadError."""
    head = await reader.readexactly(2)  # every packet has a first byte and a length byte
    first, length, shift = head[0], head[1] & 0x7F, 7
    byte = head[1]
    while byte & 0x80:
        if shift > 21:
            raise MalformedPacket("remaining length is longer than 4 bytes")
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
    if length > max_bytes:
        raise MalformedPacket(f"packet of {length} bytes is over the limit of {max_bytes}")
    return first, await reader.readexactly(length) if length else b""


# --- the client -------------------------------------------------------------------------

MessageCallback = Callable[[Message], None]


class MqttClient:
    """One MQTT 3.1.1 connection that reconnects by itself until `disconnect()` or `abort()`."""

    __slots__ = (
        "_closing", "_connected", "_connected_event", "_inflight", "_last_in", "_last_out",
        "_next_id", "_ping_outstanding", "_reader", "_sub_waiters", "_subscriptions", "_task",
        "_timer", "_waiters", "_writer", "clean_session", "client_id", "connect_timeout_s",
        "host", "keepalive", "max_packet_bytes", "messages", "on_message", "on_reconnect",
        "password", "port", "reconnect_initial_s", "reconnect_max_s", "reconnects", "username",
        "will",
    )  # fmt: skip

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
        will: Will | None = None,
        on_message: MessageCallback | None = None,
        on_reconnect: Callable[[bool], None] | None = None,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        max_packet_bytes: int = 1 << 20,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.will = will
        # on_message runs in the reader task: it must not block. Without it, messages queue.
        self.on_message = on_message
        self.messages: asyncio.Queue[Message] | None = None if on_message else asyncio.Queue()
        self.on_reconnect = on_reconnect  # (session_present), after resubscribing
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self.max_packet_bytes = max_packet_bytes
        self.reconnects = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._connected = False
        self._connected_event: asyncio.Event | None = None  # made only when someone waits
        self._closing = False
        self._next_id = 1
        # Unacknowledged QoS 1 publishes, oldest first: packet id → the packet to (re)send.
        self._inflight: dict[int, bytes] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._sub_waiters: dict[int, tuple[list[str], asyncio.Future[list[int]] | None]] = {}
        self._subscriptions: dict[str, int] = {}
        self._last_in = self._last_out = 0.0
        self._ping_outstanding = False

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def unacknowledged(self) -> int:
        """QoS 1 publishes the broker has not acknowledged yet."""
        return len(self._inflight)

    async def connect(self) -> bool:
        """Connect (returns session_present), or raise ConnectRefused, OSError or TimeoutError."""
        if self._task is not None:
            raise RuntimeError(f"client {self.client_id} is already connected")
        self._closing = False
        session_present = await self._open()
        self._resume()  # after a disconnect(): what was left unacknowledged then
        self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.client_id}")
        return session_present

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected; TimeoutError after timeout seconds."""
        if self._connected:
            return
        if self._connected_event is None:
            self._connected_event = asyncio.Event()
        async with asyncio.timeout(timeout):
            await self._connected_event.wait()

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> int | None:
        """Send now; QoS 1 is kept until PUBACK (sent on reconnect); QoS 0 offline is dropped."""
        if qos == 0:
            if self._connected:
                self._write(publish_packet(topic, payload, 0, retain))
            return None
        packet_id = self._take_packet_id()
        packet = publish_packet(topic, payload, qos, retain, packet_id)
        if self._connected:
            self._write(packet)
            packet = _with_dup(packet)
        self._inflight[packet_id] = packet
        return packet_id

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
        packet_id = self.publish_nowait(topic, payload, qos, retain)
        if packet_id is None or not wait:
            await self._drain()
            return packet_id
        future = asyncio.get_running_loop().create_future()
        self._waiters[packet_id] = future
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            self._waiters.pop(packet_id, None)
        return packet_id

    async def subscribe(
        self, filters: Iterable[tuple[str, int]], timeout: float | None = 10.0
    ) -> list[int]:
        """Subscribe (renewed on every reconnect); returns granted QoS; SubscribeRefused if any."""
        wanted = list(filters)
        for topic_filter, qos in wanted:
            _check_filter(topic_filter, qos)
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
        task = self._task
        if self._connected and self._writer is not None:
            self._write(bytes((DISCONNECT, 0)))
            # The broker closes its end on DISCONNECT; the reader then ends on EOF. Closing
            # first could reset the connection and lose the DISCONNECT (and publish the Will).
            if task is not None and task is not asyncio.current_task():
                await asyncio.wait([task], timeout=timeout)
        await self._shut_down(abort=False)

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker publishes the Last Will."""
        self._closing = True
        await self._shut_down(abort=True)

    # -- connection ----------------------------------------------------------------------

    async def _open(self) -> bool:
        packet = connect_packet(
            self.client_id,
            clean_session=self.clean_session,
            keepalive=self.keepalive,
            username=self.username,
            password=self.password,
            will=self.will,
        )
        async with asyncio.timeout(self.connect_timeout_s):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                sock = writer.get_extra_info("socket")
                # Nagle would hold a small publish up to 40 ms behind a delayed ACK. asyncio's
                # selector loop already sets this; other loops may not.
                if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                writer.write(packet)
                first, body = await read_packet(reader, self.max_packet_bytes)
                if first != CONNACK or len(body) != 2:
                    raise MalformedPacket(f"expected CONNACK, got packet type {first >> 4}")
                if body[1] != 0:
                    raise ConnectRefused(body[1])
            except BaseException:
                writer.transport.abort()
                raise
        loop = asyncio.get_running_loop()
        self._reader, self._writer = reader, writer
        self._connected = True
        self._ping_outstanding = False
        self._last_in = self._last_out = loop.time()
        if self.keepalive:
            self._timer = loop.call_later(self.keepalive / 2, self._keepalive_tick)
        if self._connected_event is not None:
            self._connected_event.set()
        return bool(body[0] & 0x01)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._read_loop()
                except (EOFError, OSError, MalformedPacket) as exc:
                    if not self._closing:
                        logger.warning(
                            "mqtt connection lost",
                            extra={"client_id": self.client_id, "error": repr(exc)},
                        )
                except Exception:
                    logger.exception("mqtt reader failed", extra={"client_id": self.client_id})
                self._drop_connection()
                if self._closing or not await self._reconnect():
                    return
        finally:
            self._drop_connection()

    async def _reconnect(self) -> bool:
        attempt = 0
        while not self._closing:
            # Jittered, so that a fleet does not stampede a broker that has just restarted.
            base = min(self.reconnect_initial_s * 2 ** min(attempt, 30), self.reconnect_max_s)
            await asyncio.sleep(base * random.uniform(0.5, 1.0))
            attempt += 1
            try:
                session_present = await self._open()
            except (OSError, TimeoutError, EOFError, MqttError) as exc:
                # A refusal (revoked credentials) will not go away by itself: say so louder.
                level = logging.WARNING if isinstance(exc, ConnectRefused) else logging.DEBUG
                logger.log(
                    level,
                    "mqtt reconnect failed",
                    extra={"client_id": self.client_id, "attempt": attempt, "error": repr(exc)},
                )
                continue
            self.reconnects += 1
            self._resume()
            if self.on_reconnect is not None:
                try:
                    self.on_reconnect(session_present)
                except Exception:
                    logger.exception(
                        "on_reconnect callback failed", extra={"client_id": self.client_id}
                    )
            return True
        return False

    def _resume(self) -> None:
        """Renew the subscriptions, then resend what the broker has not acknowledged."""
        # In this order: the broker handles SUBSCRIBE first, so replies find the subscription.
        if self._subscriptions:
            self._send_subscribe(list(self._subscriptions.items()), None)
        for packet_id, packet in list(self._inflight.items()):
            self._write(packet)
            self._inflight[packet_id] = _with_dup(packet)

    def _drop_connection(self) -> None:
        self._connected = False
        if self._connected_event is not None:
            self._connected_event.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = self._reader = None
        # A lost SUBACK is not retried here: the subscription is renewed on reconnect.
        for _filters, future in self._sub_waiters.values():
            if future is not None and not future.done():
                future.set_exception(ConnectionLost("connection lost before SUBACK"))
        self._sub_waiters.clear()

    async def _shut_down(self, *, abort: bool) -> None:
        task, self._task = self._task, None
        if self._writer is not None:
            if abort:
                self._writer.transport.abort()
            else:
                self._writer.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])
        self._drop_connection()
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"client {self.client_id} was closed"))

    # -- reading -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        loop = asyncio.get_running_loop()
        while True:
            first, body = await read_packet(reader, self.max_packet_bytes)
            self._last_in = loop.time()
            kind = first & 0xF0
            if kind == PUBLISH:
                self._on_publish(first, body)
            elif kind == PUBACK and len(body) == 2:
                self._on_puback(struct.unpack("!H", body)[0])
            elif kind == SUBACK and len(body) >= 3:
                self._on_suback(struct.unpack_from("!H", body)[0], body[2:])
            elif kind == PINGRESP:
                self._ping_outstanding = False
            else:
                raise MalformedPacket(f"unexpected packet type {first >> 4} ({len(body)} bytes)")

    def _on_publish(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 0x03
        if qos > 1:
            raise MalformedPacket(f"PUBLISH with QoS {qos}: only 0 and 1 are subscribed")
        topic, offset = _take_string(body, 0)
        packet_id = 0
        if qos:
            if offset + 2 > len(body):
                raise MalformedPacket("PUBLISH packet id is cut short")
            (packet_id,) = struct.unpack_from("!H", body, offset)
            offset += 2
        message = Message(topic, body[offset:], qos, bool(first & 0x01), bool(first & _DUP))
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception:
                # Still acknowledged: a message that breaks the callback would break it again.
                logger.exception("on_message callback failed", extra={"client_id": self.client_id})
        elif self.messages is not None:
            self.messages.put_nowait(message)
        if qos:
            self._write(bytes((PUBACK, 2)) + struct.pack("!H", packet_id))

    def _on_puback(self, packet_id: int) -> None:
        self._inflight.pop(packet_id, None)
        future = self._waiters.pop(packet_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_suback(self, packet_id: int, codes: bytes) -> None:
        filters, future = self._sub_waiters.pop(packet_id, ([], None))
        refused = [f for f, code in zip(filters, codes, strict=False) if code == SUBACK_FAILURE]
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
                future.set_result(list(codes))

    # -- writing -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            return  # lost: QoS 1 is resent from _inflight on reconnect, QoS 0 may be lost
        writer.write(data)
        self._last_out = asyncio.get_running_loop().time()

    async def _drain(self) -> None:
        writer = self._writer
        if writer is not None and not writer.transport.is_closing():
            with contextlib.suppress(OSError):  # the reader task sees the loss and reconnects
                await writer.drain()

    def _take_packet_id(self) -> int:
        for _ in range(MAX_PACKET_ID):
            packet_id = self._next_id
            self._next_id = packet_id % MAX_PACKET_ID + 1
            if packet_id not in self._inflight and packet_id not in self._sub_waiters:
                return packet_id
        raise MqttError(f"client {self.client_id} has {MAX_PACKET_ID} packets unacknowledged")

    def _send_subscribe(
        self, filters: list[tuple[str, int]], future: asyncio.Future[list[int]] | None
    ) -> None:
        packet_id = self._take_packet_id()
        body = struct.pack("!H", packet_id)
        for topic_filter, qos in filters:
            body += encode_string(topic_filter) + bytes((qos,))
        self._sub_waiters[packet_id] = ([f for f, _ in filters], future)
        self._write(_packet(SUBSCRIBE, body))

    def _keepalive_tick(self) -> None:
        self._timer = None
        if not self._connected or self._writer is None:
            return
        if self._ping_outstanding:
            # No PINGRESP for half a keepalive: the link is dead though TCP has not noticed.
            logger.warning("mqtt keepalive timed out", extra={"client_id": self.client_id})
            self._writer.transport.abort()  # the reader task then reconnects
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Ping when idle outward (the broker needs a packet within keepalive), and when
        # nothing came in for a keepalive (to find a dead broker while heartbeats go out).
        if now - self._last_out >= self.keepalive / 2 or now - self._last_in >= self.keepalive:
            self._write(bytes((PINGREQ, 0)))
            self._ping_outstanding = True
        self._timer = loop.call_later(self.keepalive / 2, self._keepalive_tick)


def _with_dup(packet: bytes) -> bytes:
    return bytes((packet[0] | _DUP,)) + packet[1:]
