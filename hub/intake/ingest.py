"""Panel messages in, receipts out: validate, store, answer — in that order, never another.

Each panel's events are stored one after another, in the order they came; different
panels' events are stored at once, so alarms arriving together share one commit.
Status and heartbeat messages only update memory and are handled at once.

Every message comes with its broker acknowledgement, given only once the message is
handled for good: an event once committed (or answered as a repeat, or refused and
recorded), right after its receipt is handed over. An event not stored (the hub
stopped, the database failed) is left unacknowledged, and the broker hands it over
again on the hub's next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from devices import topics
from devices.protocol import (
    MAX_PAYLOAD_BYTES,
    NO_SEQ,
    PanelEvent,
    PanelStatus,
    ProtocolError,
    Reason,
    Receipt,
    ReceiptStatus,
    canonical_json,
    encode,
    load_json_object,
    parse_heartbeat,
    parse_model,
    validate_event,
)
from hub.clock import Clock
from hub.intake.panel_events import (
    EventOutcome,
    PanelEventHandler,
    answer_repeat,
    counter_was_reset,
)
from hub.intake.panel_keys import KeyRing, SignatureRefused
from hub.intake.rate import TokenBuckets
from hub.intake.rejects import RejectLog
from hub.intake.stored_events import RecentEvents
from hub.metrics import HubMetrics
from hub.panels.presence import PresenceTracker
from hub.registry.model import PanelPlace, Registry
from hub.storage.db import Database

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish_now(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]:
        """Hand one message to the broker connection now; the future is done at its PUBACK.

        Raises at once when it cannot be handed over.
        """
        ...


@dataclass(frozen=True, slots=True)
class _Inbound:
    panel_id: str
    topic: str
    payload: bytes
    arrived: float  # time.perf_counter()
    ack: Callable[[], None]  # the broker's PUBACK: once the event is committed


@dataclass(frozen=True, slots=True)
class _Checked:
    """An event that passed every check but the database's: ready to be stored."""

    inbound: _Inbound
    place: PanelPlace
    event: PanelEvent
    payload_text: str
    signed: bool


class PanelIngest:
    """Turns panel messages into stored events and receipts."""

    def __init__(
        self,
        *,
        registry: Registry,
        db: Database,
        handler: PanelEventHandler,
        clock: Clock,
        publisher: Publisher,
        metrics: HubMetrics,
        rejects: RejectLog,
        presence: PresenceTracker,
        on_stored: Callable[[EventOutcome], None],
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        keys: KeyRing | None = None,
        event_rate: float = 20.0,
        queue_size: int = 10_000,
        stored_form: Callable[[dict[str, Any]], dict[str, Any]] = lambda event: event,
    ) -> None:
        self.registry = registry  # also indexes its panels (see the setter)
        # What an event looks like where the hub keeps it (a PIN replaced by its digest).
        self.stored_form = stored_form
        self.db = db
        self.handler = handler
        self.clock = clock
        self.publisher = publisher
        self.metrics = metrics
        self.rejects = rejects
        self.presence = presence
        self.on_stored = on_stored
        self.max_payload_bytes = max_payload_bytes
        self.keys = keys if keys is not None else KeyRing()  # an empty ring is falsy
        self._answers = TokenBuckets(rate=5.0, burst=20)
        # A panel sends a handful of events a day; this is for a broken or captured one.
        self._event_rate = TokenBuckets(rate=event_rate, burst=max(10, int(event_rate * 3)))
        self.event_rate = event_rate
        # Bounded, so a hub far behind cannot grow without limit; what does not fit is
        # neither answered nor acknowledged: the broker keeps it for the next connection,
        # and its panel sends it again (it repeats until it has a receipt). The broker's
        # window of unacknowledged messages keeps a real one far below this.
        self.queue_size = queue_size
        # A lane per panel with an event being stored: its later events wait their turn.
        # A fixed set of workers made an alarm wait for other panels' writes that happened
        # to share its worker, one commit after another.
        self._lanes: dict[str, deque[_Checked]] = {}
        self._waiting = 0  # events taken and not yet handled, in every lane
        self._idle = asyncio.Event()
        self._idle.set()
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._sends: set[asyncio.Future[None]] = set()
        # Counted a thousand times a second with 10,000 panels: the labelled child once.
        self._heartbeats = metrics.status_messages.labels("heartbeat")
        self._statuses = metrics.status_messages.labels("status")
        # A panel repeats an event until its receipt comes: when the hub runs late (a
        # storm, a stalled disk) every alarm comes again after a second. A repeat of an
        # event already stored is answered from here, not queued behind the writer again.
        self._stored = RecentEvents()

    @property
    def registry(self) -> Registry:
        """The registry panels are checked against."""
        return self._registry

    @registry.setter
    def registry(self, registry: Registry) -> None:
        self._registry = registry
        # A plain dict: every message looks its panel up, and the model's lookup is slower.
        self._places = registry.panel_places()

    def on_message(
        self, topic: str, payload: bytes, ack: Callable[[], None] = lambda: None
    ) -> None:
        """Take one MQTT message, in the order the broker delivered them; call ack() once
        it is handled for good (a message that came by no broker needs none).

        Everything that needs no database is decided here, at once: a flood of garbage
        is answered (or counted) without queueing, and a real alarm behind it is not
        kept waiting. Events that pass go to their panel's worker to be stored, and are
        acknowledged there, after their commit.
        """
        arrived = time.perf_counter()
        parsed = topics.parse_panel_topic(topic)
        if parsed is None:
            self._unanswerable(topic, payload, "bad_topic", "not a panel topic of protocol v1")
        elif parsed.channel == "event":
            item = _Inbound(parsed.panel_id, topic, payload, arrived, ack)
            if self._on_event(item):
                return  # taken: acknowledged once stored
        elif parsed.channel == "status":
            self._on_status(parsed.panel_id, topic, payload)
        elif parsed.channel == "heartbeat":
            self._on_heartbeat(parsed.panel_id, topic, payload)
        # receipts are the hub's own messages; a broker may echo them back: nothing to do.
        ack()

    def _on_event(self, item: _Inbound) -> bool:
        """Answer an event that needs no database; True when it was taken to be stored."""
        checked = self._check_event(item)
        if checked is None:
            return False  # refused, recorded and answered
        stored = self._stored.get(item.panel_id, checked.event.seq)
        if stored is not None and not counter_was_reset(
            stored, checked.event, checked.payload_text
        ):
            outcome = answer_repeat(stored, checked.event.seq, checked.payload_text)
            self._answer(checked, outcome.receipt, self.clock.now_ms())
            return False
        return self._take(item.panel_id, checked)

    def _check_event(self, item: _Inbound) -> _Checked | None:
        """Parse, validate, and check panel, rate and signature; None when refused."""
        try:
            obj = load_json_object(item.payload, self.max_payload_bytes)
            event = validate_event(obj)
        except ProtocolError as exc:
            self._reject(item, exc.reason, exc.error, exc.seq)
            return None
        place = self._places.get(item.panel_id)
        if place is None:
            self._reject(
                item,
                Reason.UNKNOWN_PANEL,
                f"unknown_panel: panel {item.panel_id!r} is not in the registry",
                event.seq,
            )
            return None
        if not self._event_rate.allow(item.panel_id, time.monotonic()):
            self._reject(
                item,
                Reason.RATE_LIMITED,
                f"rate_limited: more than {self.event_rate:g} events a second from this panel;"
                " send it again later",
                event.seq,
            )
            return None
        try:
            signed = self.keys.check(item.panel_id, obj)
        except SignatureRefused as exc:
            self._reject(item, exc.reason, f"{exc.reason.value}: {exc.detail}", event.seq)
            return None
        # Checked as the panel signed it, kept without the PIN it may carry.
        return _Checked(item, place, event, canonical_json(self.stored_form(obj)), signed)

    def _take(self, panel_id: str, checked: _Checked) -> bool:
        """Store the event now, or after the events of its panel taken before it; False
        when the queue is full (the event stays unacknowledged: the broker keeps it)."""
        if self._waiting >= self.queue_size:
            self.metrics.unanswered.labels("overloaded").inc()
            logger.error(
                "ingest queue full; the broker hands the event over again",
                extra={"panel_id": panel_id},
            )
            return True
        self._waiting += 1
        self._idle.clear()
        lane = self._lanes.get(panel_id)
        if lane is not None:
            lane.append(checked)
            return True
        self._lanes[panel_id] = deque()
        task = asyncio.create_task(self._run_lane(panel_id, checked))
        self._lane_tasks.add(task)
        task.add_done_callback(self._lane_tasks.discard)
        return True

    async def _run_lane(self, panel_id: str, checked: _Checked) -> None:
        lane = self._lanes[panel_id]
        try:
            while True:
                try:
                    await self._store_event(checked)
                except Exception:
                    # Never lose the lane. The event stays unacknowledged: the broker hands
                    # it over again at the next connection, and the panel repeats it.
                    logger.exception("event handling failed", extra={"panel_id": panel_id})
                finally:
                    self._handled(1)
                if not lane:
                    return
                checked = lane.popleft()
        finally:
            del self._lanes[panel_id]
            # Cancelled (the hub stopping): what waited behind is not answered nor
            # acknowledged, and the broker hands it to the next hub.
            self._handled(len(lane))

    def _handled(self, count: int) -> None:
        self._waiting -= count
        if self._waiting == 0:
            self._idle.set()

    async def run(self) -> None:
        """Keep the lanes until cancelled; then cancel the events still being stored."""
        try:
            await asyncio.Future()
        finally:
            for task in list(self._lane_tasks):
                task.cancel()
            if self._lane_tasks:
                await asyncio.gather(*self._lane_tasks, return_exceptions=True)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until taken events are handled and receipts handed to the broker."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
                if self._sends:
                    await asyncio.gather(*self._sends, return_exceptions=True)

    async def _store_event(self, checked: _Checked) -> None:
        item, place, event = checked.inbound, checked.place, checked.event
        now = self.clock.now_ms()
        # Urgent: the panel is waiting on this commit for its receipt.
        outcome = await self.db.write(
            lambda conn: self.handler.apply(
                conn, place, event, checked.payload_text, now, signed=checked.signed
            ),
            urgent=True,
        )
        # Stored (committed, fsynced): only now may the panel be told.
        if outcome.stored is not None:
            self._stored.add(outcome.stored)
        self._answer(checked, outcome.receipt, now)
        # After the receipt, on the same connection: a hub killed between the two gets
        # the event again and answers it `duplicate`; never a PUBACK without a receipt.
        item.ack()
        self.on_stored(outcome)
        if outcome.new_alarm:
            logger.info(
                "alarm raised",
                extra={
                    "alarm_id": outcome.alarm_id,
                    "panel_id": item.panel_id,
                    "kind": getattr(event, "kind", None),
                },
            )

    def _answer(self, checked: _Checked, receipt: Receipt, now: int) -> None:
        """Count the answer to a stored (or already stored) event, and send it."""
        item = checked.inbound
        self.metrics.events.labels(checked.event.type.value, receipt.status.value).inc()
        if receipt.status == ReceiptStatus.REJECTED and receipt.error:
            reason = receipt.error.split(":", 1)[0]
            self.metrics.rejected.labels(reason).inc()
            self.rejects.add(
                at=now,
                topic=item.topic,
                panel_id=item.panel_id,
                reason=reason,
                error=receipt.error,
                payload=item.payload,
            )
        self._send_receipt(item, receipt)

    def _reject(self, item: _Inbound, reason: Reason, error: str, seq: int | None) -> None:
        self.metrics.rejected.labels(reason.value).inc()
        self.metrics.events.labels("invalid", ReceiptStatus.REJECTED.value).inc()
        self.rejects.add(
            at=self.clock.now_ms(),
            topic=item.topic,
            panel_id=item.panel_id,
            reason=reason.value,
            error=error,
            payload=item.payload,
        )
        if not self._answers.allow(item.panel_id, time.monotonic()):
            # A flood of garbage gets a few answers, not one each: answering is what costs.
            self.metrics.unanswered.labels("rate_limited").inc()
            return
        receipt = Receipt(
            seq=NO_SEQ if seq is None else seq, status=ReceiptStatus.REJECTED, error=error
        )
        self._send_receipt(item, receipt)

    def _send_receipt(self, item: _Inbound, receipt: Receipt) -> None:
        # Written to the socket now, before anything else this commit set off (the SMS,
        # the unit alert); the broker's PUBACK is not waited for here: that would hold
        # this panel's next event.
        try:
            acked = self.publisher.publish_now(
                topics.receipt_topic(item.panel_id), encode(receipt), 1
            )
        except Exception as exc:
            self._receipt_lost(item, receipt, exc)
            return
        self._sends.add(acked)
        acked.add_done_callback(functools.partial(self._receipt_acked, item, receipt))

    def _receipt_acked(self, item: _Inbound, receipt: Receipt, acked: asyncio.Future[None]) -> None:
        self._sends.discard(acked)
        if acked.cancelled() or (exc := acked.exception()) is not None:
            self._receipt_lost(item, receipt, exc or asyncio.CancelledError())
            return
        self.metrics.receipt_latency.observe(time.perf_counter() - item.arrived)

    def _receipt_lost(self, item: _Inbound, receipt: Receipt, exc: BaseException) -> None:
        # The panel repeats the event until it has a receipt, and gets `duplicate` then.
        logger.warning(
            "receipt not published",
            extra={"panel_id": item.panel_id, "seq": receipt.seq, "error": str(exc)},
        )

    def _on_status(self, panel_id: str, topic: str, payload: bytes) -> None:
        self._statuses.inc()
        if panel_id not in self._places:
            self._unanswerable(topic, payload, "unknown_panel", f"panel {panel_id!r} is unknown")
            return
        try:
            status = parse_model(PanelStatus, payload)
        except ProtocolError as exc:
            self._unanswerable(topic, payload, exc.reason.value, exc.error, panel_id)
            return
        self.presence.status(panel_id, status.state, self.clock.now_ms(), status.battery, status.fw)

    def _on_heartbeat(self, panel_id: str, topic: str, payload: bytes) -> None:
        self._heartbeats.inc()
        if panel_id not in self._places:
            self._unanswerable(topic, payload, "unknown_panel", f"panel {panel_id!r} is unknown")
            return
        try:
            parse_heartbeat(payload)
        except ProtocolError as exc:
            self._unanswerable(topic, payload, exc.reason.value, exc.error, panel_id)
            return
        self.presence.heartbeat(panel_id, self.clock.now_ms())

    def _unanswerable(
        self, topic: str, payload: bytes, reason: str, error: str, panel_id: str | None = None
    ) -> None:
        self.metrics.unanswered.labels(reason).inc()
        self.rejects.add(
            at=self.clock.now_ms(),
            topic=topic,
            panel_id=panel_id,
            reason=reason,
            error=error,
            payload=payload,
        )
