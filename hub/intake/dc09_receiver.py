"""A SIA DC-09 receiver in the hub: commercial alarm panels report as to a receiving centre.

Each frame is checked (CRC, length, the account's AES key, the −40 s/+20 s window) and
its Contact ID or SIA DCS events become the events a native panel of the same household
would send, stored on the same path (`PanelEventHandler`) in one transaction. The panel
gets its `ACK` only after that commit; `NAK` with the receiver's time when its clock is
off; `DUH` when the hub cannot handle what it read (an unknown account, a key that does
not open the message, data it cannot read); nothing for a frame too garbled to trust,
which the panel sends again.

A household's DC-09 panel is the household's own panel id: its events, troubles and
presence are those of that panel, so supervision judges it as any other. A DC-09
sequence number wraps at 9999 and a transmitter sends a message again until it has an
ACK, even across a hub restart: every message taken is kept (`dc09_messages`) with the
tenhub seqs its events were stored under, and a copy of it (same account, DC-09 seq and
data, within REPEAT_WINDOW_MS) finds the same stored events, answered as repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from devices import dc09
from devices.alarm_codes import CodeError, message_signals
from devices.dc09 import MAX_FRAME_BYTES, MESSAGES, Dc09Error, Dc09Message
from devices.device_signal import DeviceSignal, SignalType
from devices.protocol import canonical_json, validate_event
from hub.alarms.trouble_store import TroubleTx
from hub.alarms.work import AlarmContext
from hub.clock import Clock
from hub.intake.dc09_store import Dc09Record, Dc09Tx
from hub.intake.panel_events import EventOutcome, PanelEventHandler
from hub.intake.rejects import RejectLog
from hub.panels.presence import PresenceTracker
from hub.registry.model import PanelPlace, Registry
from hub.storage.db import Conn, Database

logger = logging.getLogger(__name__)

# A transmitter retries for minutes at most: a copy of a message taken longer ago than
# this is a new message that happens to repeat an old one (a daily test, 10,000 later).
REPEAT_WINDOW_MS = 60 * 60_000
_IDLE_TIMEOUT_S = 60.0  # a connection silent this long is closed
_DRAIN_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Taken:
    """What one DC-09 message became, once committed."""

    outcomes: tuple[EventOutcome, ...]
    repeat: bool


class Dc09Receiver:
    """The named part `dc09-receiver`: DC-09 over TCP and UDP on one address."""

    name = "dc09-receiver"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        context: AlarmContext,
        db: Database,
        handler: PanelEventHandler,
        clock: Clock,
        presence: PresenceTracker,
        rejects: RejectLog,
        on_stored: Callable[[EventOutcome], None],
    ) -> None:
        self.context = context  # its registry is replaced in place by an import
        self.db = db
        self.handler = handler
        self.clock = clock
        self.presence = presence
        self.rejects = rejects
        self.on_stored = on_stored
        # Bound now, so port 0 works and the port is known before the hub says it started.
        self._tcp, self._udp = _bind(host, port)
        self.host = host
        self.port: int = self._tcp.getsockname()[1]
        self._keys: tuple[Registry, dict[str, bytes]] | None = None
        self._server: asyncio.Server | None = None
        self._in_flight: set[asyncio.Task[bytes | None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._reading = True

    # --- serving -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve TCP connections and UDP datagrams until cancelled."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(self), sock=self._udp
        )
        try:
            self._server = await asyncio.start_server(
                self._serve_connection, sock=self._tcp, limit=MAX_FRAME_BYTES
            )
            await self._server.serve_forever()
        finally:
            transport.close()
            if self._server is not None:
                self._server.close()
            # Not waited for: a panel that keeps its connection open must not hold the stop.
            for writer in list(self._writers):
                writer.close()

    def stop_reading(self) -> None:
        """Take no more frames: new ones are not answered (the panel sends them again)."""
        self._reading = False
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float = _DRAIN_TIMEOUT_S) -> None:
        """Wait until the frames taken are answered (stored and ACKed, or not)."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = _peer(writer.get_extra_info("peername"))
        self._writers.add(writer)
        try:
            while self._reading:
                async with asyncio.timeout(_IDLE_TIMEOUT_S):
                    frame = await reader.readuntil(b"\r")
                # A frame starts at its LF: whatever came before it is line noise.
                start = frame.rfind(b"\n")
                answer = await self.answer_frame(frame[start:] if start >= 0 else frame, peer)
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the panel hung up after its answer, or went quiet
        except asyncio.LimitOverrunError:
            self._refused(peer, None, "framing", "no CR within the longest frame", b"")
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def answer_frame(self, frame: bytes, peer: str) -> bytes | None:
        """The answer to a frame that came in, None when it gets none; counted as in flight."""
        if not self._reading:
            return None
        task = asyncio.ensure_future(self.answer(frame, peer))
        self._in_flight.add(task)
        try:
            # Shielded: a connection dropped mid-store does not cut the transaction short.
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._in_flight.discard(task)
            else:
                task.add_done_callback(self._in_flight.discard)

    # --- one frame ------------------------------------------------------------------------

    async def answer(self, frame: bytes, peer: str = "") -> bytes | None:
        """The answer to one frame: ACK once its events are committed, NAK, DUH or None."""
        now = self.clock.now_ms()
        registry = self.context.registry
        try:
            msg = dc09.decode(frame, self._keys_of(registry))
        except Dc09Error as error:
            self._refused(peer, error.header, error.fault.value, error.detail, frame)
            return dc09.answer_to_error(error, now)
        if msg.token not in MESSAGES:
            self._refused(peer, msg, "not_a_message", f"a receiver takes no {msg.token}", frame)
            return None
        place = registry.dc09_place(msg.account) if msg.account else None
        if place is None:
            detail = f"account {msg.account} is not in the registry"
            self._refused(peer, msg, "unknown_account", detail, frame)
            return dc09.duh(msg)
        try:
            dc09.check_window(msg, now)
        except Dc09Error as error:
            self._refused(peer, msg, error.fault.value, error.detail, frame)
            return dc09.nak(now, msg)
        try:
            signals = message_signals(msg)
        except CodeError as error:
            self._refused(peer, msg, "unreadable_data", str(error), frame)
            return dc09.duh(msg)
        try:
            taken = await self.db.write(
                lambda conn: self._take(conn, place, msg, signals, now), urgent=True
            )
        except Exception:
            # Not stored, so not acknowledged: the panel sends it again.
            logger.exception("DC-09 message not stored", extra={"account": msg.account})
            return None
        # Committed: only now may the panel be told.
        key = self._keys_of(registry).get(msg.account or "") if msg.encrypted else None
        answer = dc09.ack(msg, now, key)
        self.presence.heartbeat(place.household.panel, now)  # any message is a sign of life
        for outcome in taken.outcomes:
            self.on_stored(outcome)
        self._log(place, msg, signals, taken)
        return answer

    def _take(
        self,
        conn: Conn,
        place: PanelPlace,
        msg: Dc09Message,
        signals: list[DeviceSignal],
        now: int,
    ) -> Taken:
        """Store the message's events (or find them, for a copy), in the writer's transaction."""
        store = Dc09Tx(conn)
        account, panel_id = msg.account or "", place.household.panel
        first = store.find(account, msg.seq, msg.token.value, msg.data, now - REPEAT_WINDOW_MS)
        repeat = first is not None
        if first is None:
            panel_ts = _ms(msg.timestamp) if msg.timestamp else now
            count = sum(s.as_event(0, 0) is not None for s in signals)
            first = Dc09Record(
                account, msg.seq, msg.token.value, msg.data, panel_id,
                store.next_seq(panel_id), count, panel_ts, now,
            )  # fmt: skip
            store.insert(first)
        outcomes: list[EventOutcome] = []
        seq = first.seq
        for signal in signals:
            event = signal.as_event(seq, first.panel_ts)
            if event is None:
                continue
            seq += 1
            # The same path as a native panel's event: a copy is found there, a repeat.
            outcomes.append(
                self.handler.apply(
                    conn,
                    place,
                    validate_event(event),
                    canonical_json(event),
                    now,
                    duress=signal.duress,
                )
            )
        if not repeat:
            troubles = TroubleTx(conn)
            for signal in signals:
                if signal.type is SignalType.RESTORE and signal.condition:
                    troubles.close(panel_id, signal.condition, now)
        return Taken(tuple(outcomes), repeat)

    # --- bookkeeping ----------------------------------------------------------------------

    def _keys_of(self, registry: Registry) -> dict[str, bytes]:
        if self._keys is None or self._keys[0] is not registry:
            self._keys = (registry, registry.dc09_keys())
        return self._keys[1]

    def _refused(
        self, peer: str, header: Dc09Message | None, reason: str, detail: str, frame: bytes
    ) -> None:
        account = header.account if header else None
        # The log hears of it there, a few a second at most: a flood of garbage is cheap.
        place = self.context.registry.dc09_place(account) if account else None
        self.rejects.add(
            at=self.clock.now_ms(),
            topic=f"dc09/{account or '?'}",
            panel_id=place.household.panel if place else None,
            reason=reason,
            error=f"{reason}: {detail} (from {peer})" if peer else f"{reason}: {detail}",
            payload=frame,
        )

    def _log(
        self, place: PanelPlace, msg: Dc09Message, signals: list[DeviceSignal], taken: Taken
    ) -> None:
        for signal in signals:
            if signal.type in (SignalType.IGNORED, SignalType.UNKNOWN):
                level = logging.INFO if signal.type is SignalType.IGNORED else logging.WARNING
                logger.log(
                    level,
                    "DC-09 event %s",
                    "ignored" if signal.type is SignalType.IGNORED else "of no known meaning",
                    extra={"account": msg.account, "source": signal.source, "zone": signal.zone},
                )
        for outcome in taken.outcomes:
            if outcome.new_alarm:
                logger.info(
                    "alarm raised",
                    extra={
                        "alarm_id": outcome.alarm_id,
                        "panel_id": place.household.panel,
                        "account": msg.account,
                    },
                )


class _DatagramProtocol(asyncio.DatagramProtocol):
    """DC-09 over UDP: one frame a datagram, answered to its sender."""

    def __init__(self, receiver: Dc09Receiver) -> None:
        self.receiver = receiver
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, addr: tuple) -> None:
        try:
            answer = await self.receiver.answer_frame(data, _peer(addr))
        except Exception:
            logger.exception("DC-09 datagram not handled", extra={"peer": _peer(addr)})
            return
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _peer(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr or "")


def _bind(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket on host and port (port 0: one free port for both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):  # port 0: the TCP port may be taken for UDP; try another
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            tcp.bind((host, port))
            udp.bind((host, tcp.getsockname()[1]))
        except OSError as exc:
            tcp.close()
            udp.close()
            if port == 0:
                continue
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port} for SIA DC-09: {exc.strerror}"
            ) from None
        tcp.listen(128)
        return tcp, udp
    raise OSError(f"no free port for SIA DC-09 on {host}")
