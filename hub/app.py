"""The one place that wires the hub: broker, database, ingest, jobs and web, started together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket

import uvicorn

from alerts.channel import OutboxMessage
from alerts.panel_channel import PanelChannel
from alerts.rate_limit import RateLimiter, Tier
from alerts.reconcile import DOUBT_SETTLE_MS, SendReconciler
from alerts.sender import OutboxSender
from hub.accounts.account_store import AccountStore
from hub.accounts.login_throttle_store import LoginThrottleStore
from hub.alarms.alarm_service import AlarmService
from hub.alarms.alarm_store import AlarmStore
from hub.alarms.channels import delivery_channels
from hub.alarms.contact_store import ContactStore
from hub.alarms.escalation import EscalationEngine
from hub.alarms.outbox_store import OutboxStore
from hub.alarms.policy import DEFAULT_POLICIES, PolicySet
from hub.alarms.work import AlarmChange, AlarmContext, LifecycleRules
from hub.broker.credential_store import CredentialStore
from hub.broker.embedded_broker import EmbeddedBroker
from hub.broker.mqtt_transport import MqttTransport
from hub.clock import Clock
from hub.events import EventBus
from hub.intake.dc09_receiver import Dc09Receiver
from hub.intake.ingest import PanelIngest
from hub.intake.panel_events import EventOutcome, PanelEventHandler
from hub.intake.panel_keys import KeyRefresher, KeyRing
from hub.intake.rejects import RejectLog
from hub.jobs import JobRunner
from hub.metrics import HubMetrics
from hub.panels.panel_store import PanelStore
from hub.panels.presence import PresenceTracker
from hub.panels.supervision import PanelSupervisor
from hub.registry.model import Registry
from hub.registry.pins import PinDigest, pin_key_path, seal_pins
from hub.settings import BrokerAddress, Settings, parse_host_port
from hub.storage.db import Database
from hub.web import BrokerLink, LiveRegistry, WebServices, create_web_app
from hub.web.server import EmbeddedServer

logger = logging.getLogger(__name__)

EMBEDDED_BROKER_USER = "tenhub-hub"
_CHANGE_RANK = {"note": 0, "step": 1, "state": 2, "raised": 3}
_WEB_GRACE_S = 5  # at stop, for the web requests still open


class Hub:
    """A running hub. `run()` serves until `stop()`; everything it starts, it stops."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        policies: PolicySet | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        registry = _sealed(registry)
        self.registry = registry
        self.clock = clock or settings.clock()
        # Bound now, so port 0 works and the public URL (in SMS links, calls) is known.
        self._http_socket = _bind(settings.http_addr)
        self.http_port: int = self._http_socket.getsockname()[1]
        self.public_url = settings.public_url or _local_url(settings.http_addr, self.http_port)
        self.public_url = self.public_url.rstrip("/")
        self.context = AlarmContext(
            registry,
            policies or DEFAULT_POLICIES,
            LifecycleRules(
                cancel_window_ms=int(settings.cancel_window_s * 1000),
                max_wrong_pins=settings.max_wrong_pins,
            ),
            public_url=self.public_url,
            language=settings.language,
            timezone=settings.timezone,
        )
        self.metrics = HubMetrics()
        self.rejects = RejectLog()
        self.events = EventBus()
        self.presence = PresenceTracker(on_change=self._on_panel_change)
        # Read when scraped, not set on every heartbeat.
        self.metrics.panels_online.set_function(self.presence.online_count)
        self.db = Database(settings.database(), on_commit=self.metrics.db_commit.observe)
        self.alarms = AlarmStore(self.db)
        self.outbox = OutboxStore(self.db)
        self.contacts = ContactStore(self.db)
        self.accounts = AccountStore(self.db)
        self.login_failures = LoginThrottleStore(self.db)
        self.panels = PanelStore(self.db)
        self.credentials = CredentialStore(self.db)
        self.keys = KeyRing()
        self.embedded_broker: EmbeddedBroker | None = None
        external = settings.broker()
        if external is None:
            host, port = parse_host_port(settings.embedded_broker_addr)
            self.embedded_broker = EmbeddedBroker(host, port)
            # The embedded broker queues messages only for clients that give a username.
            external = BrokerAddress(host, port, EMBEDDED_BROKER_USER, None, tls=False)
        self.broker_address = external
        self.ingest = PanelIngest(
            registry=registry,
            db=self.db,
            handler=PanelEventHandler(self.context),
            clock=self.clock,
            publisher=self,
            metrics=self.metrics,
            rejects=self.rejects,
            presence=self.presence,
            on_stored=self._on_stored,
            max_payload_bytes=settings.max_payload_bytes,
            keys=self.keys,
        )
        # Alarm panels that report over SIA DC-09, when an address is set for them.
        self.dc09: Dc09Receiver | None = None
        if settings.dc09_addr:
            self.dc09 = Dc09Receiver(
                *parse_host_port(settings.dc09_addr),
                context=self.context,
                db=self.db,
                handler=PanelEventHandler(self.context),
                clock=self.clock,
                presence=self.presence,
                rejects=self.rejects,
                on_stored=self._on_stored,
            )
        self.transport = MqttTransport(
            self.broker_address,
            settings.hub_client_id,
            self.ingest.on_message,
            self.metrics,
            clock=self.clock,
        )
        self.sender = OutboxSender(
            self.outbox,
            {"panel": PanelChannel(self.publish)},  # the others join in run(): keys on disk
            self.clock,
            limiter=RateLimiter(self.outbox.recent_sends, _rate_tiers(settings)),
            on_result=self._on_send_result,
        )
        speed = settings.clock_speed
        self.sender_runner = JobRunner(self.sender, speed=speed)
        self._slow_queued = 0  # commits so far that queued messages the slow way
        self.engine = EscalationEngine(
            self.db, self.context, self.clock, on_commit=self._after_step
        )
        self.engine_runner = JobRunner(self.engine, speed=speed)
        self.supervisor = PanelSupervisor(
            self.db,
            self.panels,
            self.presence,
            self.context,
            self.clock,
            offline_after_ms=settings.offline_after_ms,
            connected_since=lambda: self.transport.connected_at,
            on_commit=self._after_commit,
        )
        self.key_refresher = KeyRefresher(self.credentials, self.keys)
        self.reconciler = SendReconciler(
            self.outbox, self.sender.channels, self.clock, on_resend=self.sender_runner.wake
        )
        self.job_runners = [
            self.engine_runner,
            self.sender_runner,
            JobRunner(self.supervisor, speed=speed),
            JobRunner(self.key_refresher, tick_s=10.0),
            JobRunner(self.reconciler, tick_s=5.0, speed=speed),
        ]
        self.actions = AlarmService(self.db, self.context, self.clock, self._after_commit)
        self.web = create_web_app(self._web_services())
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_now = asyncio.Event()  # asked to stop twice: do not wait for sends

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish through the hub's broker connection."""
        await self.publish_now(topic, payload, qos)

    def publish_now(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]:
        """Hand a message to the broker connection now; the future is done at its PUBACK."""
        return self.transport.publish_now(topic, payload, qos)

    def _on_stored(self, outcome: EventOutcome) -> None:
        self._after_commit(outcome.notifications_queued, outcome.changes, outcome.fast_sends)

    def _after_step(
        self,
        queued: int,
        changes: tuple[AlarmChange, ...],
        fast_sends: tuple[OutboxMessage, ...],
    ) -> None:
        """The escalation engine committed its steps: as any commit, but the engine is not
        woken. It learnt when its next step falls due in that same transaction; woken,
        it ran an empty transaction after every step, at the front of the writer's queue."""
        self._after_commit(queued, changes, fast_sends, wake_engine=False)

    def _after_commit(
        self,
        queued: int,
        changes: tuple[AlarmChange, ...],
        fast_sends: tuple[OutboxMessage, ...],
        wake_engine: bool = True,
    ) -> None:
        """Something was committed: sound the unit, wake who has work, tell who watches."""
        if queued > len(fast_sends):
            self._slow_queued += 1
            self.sender_runner.wake()
        if fast_sends:
            # Buzzers and people should not wait for the sender's next look at the outbox.
            self.sender.send_now(
                fast_sends, then=functools.partial(self._fast_sent, self._slow_queued)
            )
        if changes and wake_engine:
            self.engine_runner.wake()
        latest: dict[str, AlarmChange] = {}
        for change in changes:
            # The strongest word per alarm, in its last state: raised > state > step > note.
            before = latest.get(change.alarm_id)
            rank = _CHANGE_RANK[change.change]
            if before is None or rank >= _CHANGE_RANK[before.change]:
                latest[change.alarm_id] = change
            else:
                latest[change.alarm_id] = AlarmChange(
                    change.alarm_id, change.unit_id, change.kind, change.state, before.change
                )
        for change in latest.values():
            unit = self.registry.unit(change.unit_id)
            self.events.publish(
                {
                    "type": "alarm",
                    "id": change.alarm_id,
                    "state": change.state,
                    "kind": change.kind,
                    "unit_id": change.unit_id,
                    "zone": unit.zone if unit else None,
                    "change": change.change,
                }
            )

    def _fast_sent(self, slow_queued_before: int, all_sent: bool) -> None:
        """Fast sends are done: wake the sender only if a message may wait on it.

        One that did not go out (held, to retry, its outcome not stored) is the sender's
        now, and a message queued the slow way while they were out may sit behind one of
        them in its line; else the sender would find nothing new, at the cost of two reads.
        """
        if not all_sent or self._slow_queued != slow_queued_before:
            self.sender_runner.wake()

    def _on_panel_change(self, panel_id: str, state: str) -> None:
        place = self.registry.panel_place(panel_id)
        self.events.publish(
            {
                "type": "panel",
                "panel_id": panel_id,
                "state": state,
                "zone": place.unit.zone if place else None,
            }
        )

    def replace_registry(self, registry: Registry) -> None:
        """Serve a new registry from now on (an import); alarms already open keep going."""
        registry = _sealed(registry)
        self.registry = registry
        self.context.registry = registry
        self.ingest.registry = registry
        logger.info("registry replaced", extra=registry.counts())

    def _on_send_result(self, channel: str, outcome: str) -> None:
        if outcome == "sent":
            self.metrics.outbox_sent.labels(channel).inc()
        else:
            self.metrics.outbox_errors.labels(channel, outcome).inc()

    def _web_services(self) -> WebServices:
        """What the web may use of this hub: its parts, never the hub itself."""
        return WebServices(
            settings=self.settings,
            public_url=self.public_url,
            clock=self.clock,
            registry=LiveRegistry(current=lambda: self.registry, replace=self.replace_registry),
            actions=self.actions,
            alarms=self.alarms,
            outbox=self.outbox,
            contacts=self.contacts,
            accounts=self.accounts,
            login_failures=self.login_failures,
            panels=self.panels,
            presence=self.presence,
            rejects=self.rejects,
            events=self.events,
            metrics=self.metrics,
            db=self.db,
            broker=BrokerLink(
                url=self.broker_address.display(), connected=self.transport.connected.is_set
            ),
            channels=self.sender.channels,  # filled in place at start, with the keyed ones
            jobs=tuple(self.job_runners),
        )

    def stop(self) -> None:
        """Ask `run()` to shut down in order and return; asked again, without waiting for
        the sends in flight (they are marked unknown when the hub starts next)."""
        if self._stop.is_set():
            self._stop_now.set()
        self._stop.set()

    async def run(self) -> None:
        """Serve until stop() (or cancellation), then shut down in order."""
        http_socket = self._http_socket
        server = EmbeddedServer(
            uvicorn.Config(
                self.web,
                log_level="warning",
                lifespan="off",
                access_log=False,
                # A request still open then (a stuck client) does not hold the stop up.
                timeout_graceful_shutdown=_WEB_GRACE_S,
                # X-Forwarded-For names the client only when a proxy the operator named
                # sent it: uvicorn's own default trusts 127.0.0.1, so any local process
                # (or a proxy that passes the header on) could choose its address, and
                # with it the login throttle's key.
                proxy_headers=bool(self.settings.forwarded_allow_ips),
                forwarded_allow_ips=list(self.settings.forwarded_allow_ips),
            )
        )
        try:
            if self.embedded_broker is not None:
                await self.embedded_broker.start()
            await self.db.open()
            await self.key_refresher.run_once()  # before the first event is checked
            for panel_id, presence in await self.panels.load_presence():
                self.presence.restore(panel_id, presence)
            digest = await asyncio.to_thread(
                PinDigest.load_or_create, pin_key_path(self.settings.db_path)
            )
            self.ingest.stored_form = digest.stored_form
            interrupted = await self.outbox.recover_interrupted(
                self.clock.now_ms() + DOUBT_SETTLE_MS
            )
            if interrupted:
                logger.warning(
                    "messages caught mid-send by the last stop are marked unknown",
                    extra={"count": interrupted},
                )
            self.sender.channels.update(
                await asyncio.to_thread(
                    delivery_channels, self.settings, self.public_url, self.contacts
                )
            )
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.transport.run(), name="mqtt"),
                    tg.create_task(self.ingest.run(), name="ingest"),
                    *(tg.create_task(r.run(), name=r.job.name) for r in self.job_runners),
                ]
                if self.dc09 is not None:
                    tasks.append(tg.create_task(self.dc09.run(), name=self.dc09.name))
                web_task = tg.create_task(server.serve(sockets=[http_socket]), name="web")
                logger.info(
                    "hub started",
                    extra={
                        "broker": self.broker_address.display(),
                        "db": self.db.display(),
                        "http": f"{self.settings.http_addr.rpartition(':')[0]}:{self.http_port}",
                        "schema_version": self.db.schema_version,
                        "dc09": f"{self.dc09.host}:{self.dc09.port}" if self.dc09 else None,
                    },
                )
                self.started.set()
                await self._stop.wait()
                # In order: stop taking messages, finish those taken (their receipts and
                # acknowledgements go out on the open connection), then stop the rest.
                self.transport.stop_reading()
                if self.dc09 is not None:
                    self.dc09.stop_reading()
                await self.ingest.drain()
                if self.dc09 is not None:
                    await self.dc09.drain()
                tasks[0].cancel()
                self.events.close()  # the dashboards' live streams end, not hold the web up
                server.should_exit = True
                for task in tasks[1:]:
                    task.cancel()
                unfinished = await self._finish_sends()
                if unfinished:
                    logger.warning(
                        "sends still unanswered at stop; they will be marked unknown",
                        extra={"count": unfinished},
                    )
                if self._stop_now.is_set():
                    web_task.cancel()  # not the open requests' grace either
                with contextlib.suppress(asyncio.CancelledError):
                    await web_task
        finally:
            await self.sender.close()
            await self.db.close()
            if self.embedded_broker is not None:
                await self.embedded_broker.stop()
            http_socket.close()
            logger.info("hub stopped")

    async def _finish_sends(self) -> int:
        """Wait for the sends in flight to be answered, unless asked to stop now; cancel
        those that were not and say how many."""
        # An SMS cut off mid-request could not be told sent or not: let the sends in
        # flight get their answers (each within its channel's timeout). An operator who
        # cannot wait stops again: they are marked unknown, never sent twice.
        count, timeout = self.sender.in_flight, self.settings.twilio_timeout_s + 5
        if count and not self._stop_now.is_set():
            logger.warning(
                "waiting for the sends in flight to be answered; stop again (Ctrl-C) not to wait",
                extra={"count": count, "at_most_s": timeout},
            )
            drained = asyncio.ensure_future(self.sender.drain(timeout))
            now = asyncio.ensure_future(self._stop_now.wait())
            await asyncio.wait({drained, now}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
            now.cancel()
        return await self.sender.abandon()


def _rate_tiers(settings: Settings) -> dict[str, tuple[Tier, ...]]:
    window = 15 * 60_000
    limits = {
        "sms": settings.sms_per_15min,
        "voice": settings.calls_per_15min,
        "push": settings.pushes_per_15min,
    }
    return {channel: (Tier(n, window),) for channel, n in limits.items() if n > 0}


def _local_url(addr: str, port: int) -> str:
    host = parse_host_port(addr)[0]
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _sealed(registry: Registry) -> Registry:
    """The registry with its PINs hashed: the hub holds no PIN in clear."""
    sealed, problems = seal_pins(registry)
    for problem in problems:
        logger.warning("%s", problem.format())
    assert sealed is not None, "without a previous registry, sealing finds no error"
    return sealed


def _bind(addr: str) -> socket.socket:
    """Bind the HTTP socket first, so port 0 works and the real port is known."""
    host, port = parse_host_port(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {addr} for HTTP: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
