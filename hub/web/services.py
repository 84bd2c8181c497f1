"""What the web may use of the hub, and the typed FastAPI dependencies that hand it out.

The wiring builds one `WebServices` and gives it to `create_web_app`; routes ask for the
narrow part they need (`alarms: AlarmStoreDep`, `registry: RegistryDep`, …). The web
knows these parts, never the object that wires them. Every dependency reads
`request.app.state`, so none of them shows in the OpenAPI document; they are `async`
so that FastAPI calls them on the event loop, not in its thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from alerts.channel import Channel
from hub.accounts.account_store import AccountStore
from hub.accounts.login_throttle_store import LoginThrottleStore
from hub.alarms.alarm_service import AlarmService
from hub.alarms.alarm_store import AlarmStore
from hub.alarms.contact_store import ContactStore
from hub.alarms.outbox_store import OutboxStore
from hub.clock import Clock
from hub.events import EventBus
from hub.intake.rejects import RejectLog
from hub.jobs import JobRunner
from hub.metrics import HubMetrics
from hub.panels.panel_store import PanelStore
from hub.panels.presence import PresenceTracker
from hub.registry.model import Registry
from hub.settings import Settings
from hub.storage.db import Database


@dataclass(frozen=True)
class LiveRegistry:
    """The registry the hub serves now, and the way to serve another (an import)."""

    current: Callable[[], Registry]
    replace: Callable[[Registry], None]  # alarms already open keep going


@dataclass(frozen=True)
class BrokerLink:
    """The hub's broker connection as /healthz reports it."""

    url: str  # for display: no password
    connected: Callable[[], bool]


@dataclass(frozen=True)
class WebServices:
    """Everything the web routes use of a running hub, each part by its own type."""

    settings: Settings
    public_url: str  # without a trailing slash
    clock: Clock
    registry: LiveRegistry
    actions: AlarmService
    alarms: AlarmStore
    outbox: OutboxStore
    contacts: ContactStore
    accounts: AccountStore
    login_failures: LoginThrottleStore
    panels: PanelStore
    presence: PresenceTracker
    rejects: RejectLog
    events: EventBus
    metrics: HubMetrics
    db: Database
    broker: BrokerLink
    channels: Mapping[str, Channel]  # the sender's: the keyed channels join at start
    jobs: Sequence[JobRunner]


def attach(app: FastAPI, services: WebServices) -> None:
    """Make `services` what the dependencies of `app` hand out."""
    app.state.services = services


def _services(request: Request) -> WebServices:
    return request.app.state.services


async def settings(request: Request) -> Settings:
    """The hub's settings."""
    return _services(request).settings


async def public_url(request: Request) -> str:
    """The base URL by which Twilio and browsers reach the hub, without a trailing slash."""
    return _services(request).public_url


async def clock(request: Request) -> Clock:
    """The hub's clock."""
    return _services(request).clock


async def current_registry(request: Request) -> Registry:
    """The registry served when the request came in."""
    return _services(request).registry.current()


async def live_registry(request: Request) -> LiveRegistry:
    """The registry served now and the way to replace it, for imports."""
    return _services(request).registry


async def alarm_actions(request: Request) -> AlarmService:
    """What responders do to alarms: acknowledge, on scene, resolve, escalate."""
    return _services(request).actions


async def alarm_store(request: Request) -> AlarmStore:
    """Alarms, their timelines and their steps."""
    return _services(request).alarms


async def outbox_store(request: Request) -> OutboxStore:
    """Notifications queued and sent, with their delivery."""
    return _services(request).outbox


async def contact_store(request: Request) -> ContactStore:
    """Who was told of which alarm, reply codes and push subscriptions."""
    return _services(request).contacts


async def account_store(request: Request) -> AccountStore:
    """Accounts, sessions and API tokens."""
    return _services(request).accounts


async def login_failure_store(request: Request) -> LoginThrottleStore:
    """Failed logins, per account and address."""
    return _services(request).login_failures


async def panel_store(request: Request) -> PanelStore:
    """Panels' presence and troubles as stored."""
    return _services(request).panels


async def presence(request: Request) -> PresenceTracker:
    """Which panels are online now."""
    return _services(request).presence


async def rejects(request: Request) -> RejectLog:
    """The latest refused panel messages."""
    return _services(request).rejects


async def event_bus(request: Request) -> EventBus:
    """Alarm and panel changes, for the live streams."""
    return _services(request).events


async def metrics(request: Request) -> HubMetrics:
    """The hub's Prometheus metrics."""
    return _services(request).metrics


async def database(request: Request) -> Database:
    """The hub's database, for /healthz to ask whether it answers."""
    return _services(request).db


async def broker_link(request: Request) -> BrokerLink:
    """The hub's broker connection."""
    return _services(request).broker


async def channels(request: Request) -> Mapping[str, Channel]:
    """The delivery channels ready now, by name."""
    return _services(request).channels


async def jobs(request: Request) -> Sequence[JobRunner]:
    """The hub's background jobs."""
    return _services(request).jobs


SettingsDep = Annotated[Settings, Depends(settings)]
PublicUrlDep = Annotated[str, Depends(public_url)]
ClockDep = Annotated[Clock, Depends(clock)]
RegistryDep = Annotated[Registry, Depends(current_registry)]
LiveRegistryDep = Annotated[LiveRegistry, Depends(live_registry)]
AlarmActionsDep = Annotated[AlarmService, Depends(alarm_actions)]
AlarmStoreDep = Annotated[AlarmStore, Depends(alarm_store)]
OutboxStoreDep = Annotated[OutboxStore, Depends(outbox_store)]
ContactStoreDep = Annotated[ContactStore, Depends(contact_store)]
AccountStoreDep = Annotated[AccountStore, Depends(account_store)]
LoginFailuresDep = Annotated[LoginThrottleStore, Depends(login_failure_store)]
PanelStoreDep = Annotated[PanelStore, Depends(panel_store)]
PresenceDep = Annotated[PresenceTracker, Depends(presence)]
RejectsDep = Annotated[RejectLog, Depends(rejects)]
EventBusDep = Annotated[EventBus, Depends(event_bus)]
MetricsDep = Annotated[HubMetrics, Depends(metrics)]
DatabaseDep = Annotated[Database, Depends(database)]
BrokerDep = Annotated[BrokerLink, Depends(broker_link)]
ChannelsDep = Annotated[Mapping[str, Channel], Depends(channels)]
JobsDep = Annotated[Sequence[JobRunner], Depends(jobs)]
