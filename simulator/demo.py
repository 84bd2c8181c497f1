"""`tenhub demo`: embedded broker, hub, SMS gateway and a virtual fleet on one machine.

Shows, live, what the product does, story after story: a duress alarm, a panel going
offline and back, a false alarm cancelled with the PIN, an alarm the patrol resolves, one
nobody answers, and a storm that meets the per-phone rate limit on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.console import Console

from devices.panel import ReferencePanel
from hub.app import Hub
from hub.passwords import hash_password
from hub.registry.model import Registry, parse_registry
from hub.settings import Settings
from simulator.demo_stories import loop_of, watch_the_web
from simulator.demo_story import AlertBoard, Stage, Tally, plural, summary
from simulator.demo_tiles import ATTRIBUTION, DemoTileServer
from simulator.fleet import PanelFleet
from simulator.registry_gen import make_registry
from simulator.twilio_gateway import TwilioGateway

HUB_NUMBER = "+15550001000"


# The quarter of Wuhan the generated demo city lies in: a few streets wide.
DEMO_BOX = (30.560, 30.605, 114.205, 114.275)
STORM_UNITS = 2  # the storm's quarter: two buildings of one zone
STORIES_PER_LOOP = 6


@dataclass
class DemoOptions:
    registry: Registry | None = None  # None: a city generated for the demo's pace
    every_s: float = 4.0
    alarms: int = 0  # 0: until Ctrl-C
    loops: int = 0  # 0: until Ctrl-C
    units: int | None = None  # generated city: this many quiet units (None: from the pace)
    http_addr: str = "127.0.0.1:8080"
    data_dir: Path | None = None
    keep: bool = False  # keep a temporary data folder on exit
    tile_url: str | None = None  # the desk map's tiles; None: the demo draws its own
    tile_attribution: str = ""
    seed: int | None = None


# The demo plays a day's alarms in minutes: its phones may take more than a hub's default
# (5 SMS and 3 calls in 15 minutes), and the quiet stories are spread over enough units
# that none meets these; the storm meets them on purpose.
DEMO_SMS_PER_15MIN = 15
DEMO_CALLS_PER_15MIN = 8
QUIET_UNITS = 16


def quiet_units_for(every_s: float) -> int:
    """Units the quiet stories need so that no phone meets the demo's per-phone limits.

    A unit's phones get about one SMS per story played there, its desk one call per two
    stories; a story takes a second or two beyond the pause.
    """
    stories_per_15min = 900 / (every_s + 1.5)
    return math.ceil(stories_per_15min / (DEMO_SMS_PER_15MIN - 2))


def demo_registry(units: int, seed: int = 0) -> Registry:
    """A generated city: `units` quiet units, each its own zone with its own patrol and
    desk, and the storm's quarter (two units of one zone, listed first)."""
    text = make_registry(units + STORM_UNITS, zones=units + 1, seed=seed, box=DEMO_BOX)
    registry, problems = parse_registry(text, "demo registry")
    assert registry is not None, problems
    return registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_addr(preferred: str) -> str:
    """The preferred address, or a free port on the same host when it is taken."""
    host, _, port = preferred.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
            return preferred
        except OSError:
            return f"{host}:0"


async def _demo_accounts(hub: Hub, registry: Registry) -> str:
    """A desk and a patrol account for the dashboard; returns their (fresh) password."""
    password = "-".join(secrets.token_hex(3) for _ in range(3))
    hashed = await asyncio.to_thread(hash_password, password)
    zones = tuple(dict.fromkeys(u.zone for u in registry.units))
    # The patrol account walks the zone of the last unit (a quiet one in a generated city).
    patrol = next((p for p in registry.patrols if p.zone == registry.units[-1].zone), None)
    now = hub.clock.now_ms()
    for name, role, user_zones, phone in (
        ("desk", "police", zones, None),
        (
            "patrol",
            "patrol",
            (patrol.zone,) if patrol else zones[:1],
            patrol.members[0].phone if patrol and patrol.members else None,
        ),
    ):
        if await hub.accounts.find_user(name):
            await hub.accounts.set_password(name, hashed)
        else:
            await hub.accounts.add_user(name, hashed, role, user_zones, phone, now)
    return password


async def run_demo(options: DemoOptions, console: Console) -> int:
    """Run until Ctrl-C (or `options.loops` loops, `options.alarms` alarms); the exit code."""
    every = options.every_s
    registry = options.registry or demo_registry(options.units or QUIET_UNITS)
    temporary = options.data_dir is None
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="tenhub-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    broker_port = _free_port()
    gateway = TwilioGateway(phone_number=HUB_NUMBER)
    await asyncio.to_thread(gateway.start)
    tiles = None
    if options.tile_url is None:
        tiles = DemoTileServer()
        tiles.start()
    settings = Settings(
        broker_url=None,
        embedded_broker_addr=f"127.0.0.1:{broker_port}",
        hub_client_id="tenhub-demo-hub",
        db_path=str(data_dir / "tenhub.db"),
        http_addr=_http_addr(options.http_addr),
        twilio_account_sid=gateway.account_sid,
        twilio_auth_token=gateway.auth_token,
        twilio_from=HUB_NUMBER,
        twilio_api_base=gateway.base_url,
        sms_per_15min=DEMO_SMS_PER_15MIN,
        calls_per_15min=DEMO_CALLS_PER_15MIN,
        map_tile_url=options.tile_url or (tiles.url_template if tiles else None),
        map_tile_attribution=options.tile_attribution if options.tile_url else ATTRIBUTION,
        # The console prints the machine's time: the SMS it shows should say the same.
        timezone=_local_zone() or Settings.model_fields["timezone"].default,
    )
    hub = Hub(settings, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    hub_task = asyncio.create_task(hub.run(), name="hub")
    started = asyncio.create_task(hub.started.wait())
    await asyncio.wait([hub_task, started], return_when=asyncio.FIRST_COMPLETED)
    if hub_task.done():
        started.cancel()
        await asyncio.to_thread(gateway.stop)
        if tiles:
            tiles.stop()
        hub_task.result()  # raises the reason the hub could not start
    await hub.transport.connected.wait()

    web = hub.public_url
    counts = registry.counts()
    password = await _demo_accounts(hub, registry)
    console.print(f"[bold]tenhub demo[/bold]   web: [cyan]{web}[/cyan]")
    console.print(
        f"  log in as [bold]desk[/bold] (police desk, every zone) or [bold]patrol[/bold]"
        f" (patrol phone page, zone {registry.units[-1].zone}), password [bold]{password}[/bold]"
    )
    console.print(
        f"  desk {web}/desk · patrol {web}/patrol · API {web}/docs · health {web}/healthz"
    )
    console.print(
        f"  broker: embedded, mqtt://127.0.0.1:{broker_port} · SMS gateway: {gateway.base_url}"
    )
    console.print(
        f"  map tiles: {settings.map_tile_url}"
        + ("" if options.tile_url else " (drawn by the demo: an imaginary street plan)")
    )
    fate = "removed on exit; --keep keeps it" if temporary and not options.keep else "kept on exit"
    console.print(f"  data: {data_dir} ({fate})")

    board = AlertBoard()
    fleet = PanelFleet(
        registry, "127.0.0.1", broker_port, data_dir / "panels", on_alert=board.on_alert
    )
    # One at a time: the embedded broker (amqtt) drops connections when others connect
    # at the same moment ("dictionary changed size during iteration").
    await asyncio.to_thread(fleet.start, parallel=1, timeout=30.0)

    def restart_panel(panel_id: str) -> ReferencePanel:
        place = registry.panel_place(panel_id)
        assert place is not None
        panel = ReferencePanel(
            panel_id,
            "127.0.0.1",
            broker_port,
            state_dir=data_dir / "panels",
            username=panel_id,
            household_id=place.household.id,
            unit_id=place.unit.id,
            heartbeat_s=10.0,
            on_alert=lambda change: board.on_alert(panel_id, change),
        )
        panel.start()
        return panel

    tally = Tally()
    stage = Stage(hub, gateway, fleet.panels, board, tally, console, every, restart_panel)
    storm_units = [u for u in registry.units[:STORM_UNITS] if options.registry is None]
    quiet = [u for u in registry.units if u not in storm_units]
    one_loop = loop_of(quiet, storm_units)
    limits = f"{settings.sms_per_15min} SMS and {settings.calls_per_15min} calls"
    console.print(
        f"  fleet: {len(fleet.panels)} virtual panels online in {plural(counts['units'], 'unit')};"
        f" per-phone limits {limits} in 15 min (a day in minutes: a hub's default is 5 and 3)."
        f" A story every {every:g} s, {STORIES_PER_LOOP} stories a loop; Ctrl-C stops."
    )
    if quiet_units_for(every) > len(quiet):
        console.print(
            f"  [yellow]note[/]: {plural(len(quiet), 'unit')} at a story every {every:g} s:"
            " their phones will meet the per-phone rate limit (a bigger registry or a larger"
            " --every keeps them clear)"
        )
    web_watch = asyncio.create_task(watch_the_web(stage))
    loops = 0
    try:
        while not stop.is_set() and not _done(options, loops, tally.raised):
            story_loop = asyncio.create_task(one_loop(stage))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([story_loop, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not story_loop.done():
                story_loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await story_loop
                break
            stopped.cancel()
            story_loop.result()
            loops += 1
            console.print(f"\n[dim]— loop {loops} done: every story told —[/dim]")
    finally:
        console.print("\nstopping…")
        web_watch.cancel()
        for task in list(tally.background):
            task.cancel()
        await asyncio.to_thread(fleet.stop)
        await asyncio.to_thread(gateway.stop_callbacks)  # none to a hub that has stopped
        hub.stop()
        await hub_task
        await asyncio.to_thread(gateway.stop)
        if tiles:
            tiles.stop()
        summary(tally, console)
        if temporary and not options.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
            console.print(f"data folder {data_dir} removed")
        else:
            console.print(f"data kept in {data_dir}")
    return 1 if tally.problems else 0


def _done(options: DemoOptions, loops: int, raised: int) -> bool:
    return bool(
        (options.loops and loops >= options.loops) or (options.alarms and raised >= options.alarms)
    )


def _local_zone() -> str | None:
    """This machine's time zone by its IANA name (from TZ or /etc/localtime), if it has one."""
    name = os.environ.get("TZ", "").lstrip(":")
    if not name:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" not in target:
            return None
        name = target.split("zoneinfo/", 1)[1]
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name
