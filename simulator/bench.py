"""`tenhub bench`: alarm latency and throughput through a real hub, beside the bare broker
and the bare disk.

One broker and one SMS gateway (a process of its own, so that its web server does not hold
the fleet's loop back); per fleet size a fresh hub process (its own database) and a fleet
of heartbeating panels in this process. At each offered rate the floors are measured
first, side by side: the broker's own round trip and a one-row durable commit on the
hub's disk, as many and as fast as the alarms; then the alarms go through the hub, and
the hub's /metrics tell how long its own commits took meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import os
import platform
import shutil
import subprocess
import time
import timeit
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from hub import event_loop
from hub.alarms.alarm_store import AlarmStore
from hub.registry.model import Registry, load_registry
from hub.settings import BrokerAddress
from hub.storage.db import Database, create_sibling_database, drop_database
from simulator.bench_load import (
    AlarmLoad,
    AlarmWatch,
    Batch,
    BrokerProbe,
    CpuWindow,
    LoadResult,
    commit_buckets,
    commit_summary,
    commit_times_s,
    peak_rss_mb,
    thread_cpu,
    thread_cpu_pct,
)
from simulator.brokers import Mosquitto, free_port
from simulator.fleet_async import AsyncFleet, raise_fd_limit
from simulator.gateway_process import GatewayProcess
from simulator.hub_process import HubProcess
from simulator.registry_gen import make_registry

HUB_NUMBER = "+15550001000"
# One SMS per alarm to the zone's patrol at once; the police step lies beyond any run.
BENCH_POLICY = """\
policies:
  default:
    steps:
      - {after: 0s, notify: [patrol], name: patrol}
      - {after: 2h, unless: resolved, notify: [police], name: police}
"""
# A household pressing again joins its open alarm of that kind, so each load has its own
# kind: a household may then raise once per load without joining an earlier alarm.
LOAD_KINDS = ("burglary", "fire", "medical", "gas")
# As `tenhub broker-config` writes it, but in memory only and without accounts.
_BROKER_CONFIG = "persistence false\nmax_connections -1\nmax_inflight_messages 100\n"


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run: fleet sizes (in units of ten panels), offered rates, time per load."""

    units: tuple[int, ...] = (100, 1000)
    rates: tuple[int, ...] = (10, 100, 500)
    duration_s: float = 10.0
    storm_fraction: float = 0.10
    settle_s: float = 10.0  # after connecting: the panels' first heartbeats spread out
    heartbeat_s: float = 10.0
    # Each load waits for its alarms' receipts, neighbours and SMS (so the next one starts
    # on a settled hub), but no longer than this.
    load_drain_s: float = 150.0
    final_drain_s: float = 30.0  # at the end of a fleet: for whatever is still on its way
    broker_url: str | None = None  # None: a Mosquitto of the bench's own
    # None: a SQLite file per fleet size; a postgresql:// URL: a fresh database per fleet
    # size on that server (created beside the one named, dropped afterwards).
    db_url: str | None = None


QUICK = BenchConfig(
    units=(100,), duration_s=2.0, settle_s=2.0, load_drain_s=6.0, final_drain_s=10.0
)
FULL = BenchConfig()


@dataclass(slots=True)
class PhaseResult:
    """One fleet size: its loads, the hub's peak memory and CPU, the database's count."""

    units: int
    panels: int
    connect_s: float = 0.0
    loads: list[LoadResult] = field(default_factory=list)
    alarms_raised: int = 0
    alarms_in_db: int = 0
    hub_peak_rss_mb: float = 0.0
    cpu_pct: dict[str, float] = field(default_factory=dict)
    reconnects: int = 0  # panels' reconnects during the phase: 0 on a healthy broker


class Observer(Protocol):
    """What the bench tells whoever runs it, as it goes."""

    def note(self, text: str) -> None: ...
    def connecting(self, done: int, total: int) -> None: ...
    def phase_started(self, panels: int, hub_pid: int) -> None: ...
    def load_started(self, panels: int, name: str, alarms: int) -> None: ...
    def load_done(self, panels: int, load: LoadResult) -> None: ...


# -- the machine --------------------------------------------------------------------------


def machine_info(broker_url: str | None) -> dict[str, Any]:
    """Cores, memory, CPU model, Python, broker and tenhub versions, and the date."""
    cpu_model = platform.processor() or platform.machine()
    with open("/proc/meminfo") as f:
        mem_kib = next((int(line.split()[1]) for line in f if line.startswith("MemTotal:")), 0)
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                cpu_model,
            )
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "cpu": cpu_model,
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "broker": broker_url or mosquitto_version(),
        "tenhub": metadata.version("tenhub"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def python_speed_ns(loops: int = 200_000, repeat: int = 5) -> float:
    """Nanoseconds one `sum(range(10))` takes here now, best of `repeat` runs of `loops`.

    How fast this machine runs Python at the moment: the hub's time is mostly Python's,
    and a shared machine may run at half its speed for minutes. Asked at the start and
    at the end of a run, it tells a slow or unsteady machine from a slower hub.
    """
    best = min(timeit.repeat("sum(range(10))", number=loops, repeat=repeat))
    return round(best / loops * 1e9, 1)


def mosquitto_version() -> str:
    """`mosquitto version 2.0.11`, as `mosquitto -h` says it; "unknown" without one."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        run = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (run.stdout or run.stderr).splitlines()
    return lines[0].strip() if lines else "unknown"


# -- the run ------------------------------------------------------------------------------


def rotation(registry: Registry) -> list[str]:
    """Every panel, one household of each unit in turn: alarms spread over the units."""
    return [
        h.panel
        for i in range(max(len(u.households) for u in registry.units))
        for u in registry.units
        for h in u.households[i : i + 1]
    ]


class Bench:
    """Starts the parts, runs every phase, stops the parts."""

    def __init__(self, config: BenchConfig, workdir: Path, observer: Observer) -> None:
        self.config = config
        self.workdir = workdir
        self.observer = observer
        self.broker: Mosquitto | None = None
        self.gateway = GatewayProcess(phone_number=HUB_NUMBER, callback_delay_s=0.05)
        self.watch = AlarmWatch()
        self.gateway.subscribe(self.watch.on_record)

    async def run(self) -> list[PhaseResult]:
        """Every phase in turn; the parts are stopped however it ends."""
        # Mosquitto inherits this limit: the fleet's sockets and the broker's both need it.
        raise_fd_limit(max(self.config.units) * 10 + 1024)
        probe: BrokerProbe | None = None
        try:
            if self.config.broker_url is None:
                self.broker = Mosquitto(self.workdir / "mosquitto", extra_config=_BROKER_CONFIG)
                await asyncio.to_thread(self.broker.start)
            address = BrokerAddress.parse(self.config.broker_url or self.broker.url)  # type: ignore[union-attr]
            await asyncio.to_thread(self.gateway.start)
            probe = BrokerProbe(address)
            await probe.start()
            return [await self._phase(units, address, probe) for units in self.config.units]
        finally:
            if probe is not None:
                await probe.stop()
            await asyncio.to_thread(self.gateway.stop)
            if self.broker is not None:
                await asyncio.to_thread(self.broker.stop)

    def _hub(self, units: int, address: BrokerAddress) -> HubProcess:
        workdir = self.workdir / f"hub-{units * 10}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "registry.yaml").write_text(make_registry(units), encoding="utf-8")
        (workdir / "policy.yaml").write_text(BENCH_POLICY, encoding="utf-8")
        user = quote(address.username or "tenhub-hub", safe="")
        secret = f":{quote(address.password, safe='')}" if address.password else ""
        env = {
            "TENHUB_BROKER_URL": f"mqtt://{user}{secret}@{address.host}:{address.port}",
            "TENHUB_REGISTRY": str(workdir / "registry.yaml"),
            "TENHUB_POLICY": str(workdir / "policy.yaml"),
            "TENHUB_HEARTBEAT_S": str(self.config.heartbeat_s),
            "TENHUB_SMS_PER_15MIN": "0",
            "TENHUB_CALLS_PER_15MIN": "0",
            "TENHUB_PUSHES_PER_15MIN": "0",
            "TENHUB_LOG_LEVEL": "warning",
            "TENHUB_TWILIO_API_BASE": self.gateway.base_url,
            "TWILIO_ACCOUNT_SID": self.gateway.account_sid,
            "TWILIO_AUTH_TOKEN": self.gateway.auth_token,
            "TWILIO_FROM": HUB_NUMBER,
        }
        if self.config.db_url is not None:
            name = f"tenhub_bench_{units}_{os.getpid()}"
            env["TENHUB_DB_URL"] = create_sibling_database(self.config.db_url, name)
        return HubProcess(workdir, free_port(), env)

    async def _phase(self, units: int, address: BrokerAddress, probe: BrokerProbe) -> PhaseResult:
        phase = PhaseResult(units, units * 10)
        hub = self._hub(units, address)
        fleet: AsyncFleet | None = None
        self.observer.note(f"{phase.panels:,} panels: starting the hub")
        try:
            await asyncio.to_thread(hub.start, 60.0)
            assert hub.proc is not None
            self.observer.phase_started(phase.panels, hub.proc.pid)
            registry = load_registry(hub.workdir / "registry.yaml")
            credentials = {} if address.username is None else {
                "username_of": lambda _p: address.username,
                "password_of": lambda _p: address.password,
            }  # fmt: skip
            fleet = AsyncFleet(
                registry, address.host, address.port, heartbeat_s=self.config.heartbeat_s,
                on_alert=self.watch.on_alert, **credentials,
            )  # fmt: skip
            await self._connect(phase, fleet)
            await self._loads(phase, fleet, registry, hub, probe)
            phase.alarms_in_db = await _count_alarms(hub.database)
            phase.hub_peak_rss_mb = round(peak_rss_mb(hub.proc.pid), 1)
            phase.reconnects = fleet.stats().reconnects
        finally:
            self.observer.note(f"{phase.panels:,} panels: stopping")
            if fleet is not None:
                await fleet.stop()
                gc.unfreeze()  # this fleet is done with: its objects may be collected again
            await asyncio.to_thread(hub.stop)
            if "TENHUB_DB_URL" in hub.env:
                await asyncio.to_thread(drop_database, hub.env["TENHUB_DB_URL"])
        return phase

    async def _connect(self, phase: PhaseResult, fleet: AsyncFleet) -> None:
        """Connect every panel, then let their first heartbeats spread out."""
        started = time.monotonic()
        failed = await fleet.start(progress=self.observer.connecting, timeout=60.0)
        if failed:
            raise RuntimeError(f"{len(failed)} panels could not connect: {sorted(failed)[:3]}")
        phase.connect_s = round(time.monotonic() - started, 1)
        self.observer.note(f"{phase.panels:,} panels connected in {phase.connect_s} s; settling")
        # The fleet's objects live to the end: out of the collector's full passes.
        gc.collect()
        gc.freeze()
        await asyncio.sleep(self.config.settle_s)

    async def _loads(
        self, phase: PhaseResult, fleet: AsyncFleet, registry: Registry, hub: HubProcess,
        probe: BrokerProbe,
    ) -> None:  # fmt: skip
        cfg, observer = self.config, self.observer
        assert hub.proc is not None
        pids = {"hub": hub.proc.pid, "bench": None, "gateway": self.gateway.pid}
        if self.broker is not None and self.broker.proc is not None:
            pids["broker"] = self.broker.proc.pid
        whole = CpuWindow(pids)
        order = [fleet.panels[p] for p in rotation(registry)]
        load = AlarmLoad(self.watch)
        batches: list[Batch] = []
        for rate, kind in zip(cfg.rates, LOAD_KINDS, strict=False):
            count = min(round(rate * cfg.duration_s), len(order))
            observer.load_started(phase.panels, f"{rate}/s", count)
            with _collector_paused():
                # The disk's probe waits on fsync in a thread: it takes little of the
                # interpreter from the broker's, and the two floors share one window.
                bare, disk = await asyncio.gather(
                    probe.run(count, rate, cfg.load_drain_s),
                    asyncio.to_thread(commit_times_s, hub.workdir, count, rate),
                )
                before = await _HubReading.take(hub)
                batch = await load.run(
                    f"{rate}/s", order[:count], kind, rate, pids, cfg.load_drain_s
                )
                (await _HubReading.take(hub)).account(before, batch)
            batch.bare, batch.disk = bare, disk
            batches.append(batch)
            observer.load_done(phase.panels, load.collect(batch, set()))
            await asyncio.sleep(1.0)  # the hub's tail work (status callbacks) settles
        storm = max(1, round(len(order) * cfg.storm_fraction))
        observer.load_started(phase.panels, "storm", storm)
        with _collector_paused():
            before = await _HubReading.take(hub)
            batch = await load.run(
                "storm", order[:storm], LOAD_KINDS[-1], None, pids, cfg.load_drain_s
            )
            (await _HubReading.take(hub)).account(before, batch)
        batches.append(batch)
        observer.load_done(phase.panels, load.collect(batch, set()))
        phase.cpu_pct = whole.pct()
        # A load drains for a bounded time only: what came later still counts, and lost
        # means no receipt at all by the end of the phase.
        left = await load.drain([e for b in batches for e in b.events], cfg.final_drain_s)
        if left:
            observer.note(f"{left:,} alarms still incomplete after the final drain")
        seen: set[str] = set()
        phase.loads = [load.collect(b, seen) for b in batches]
        phase.alarms_raised = sum(r.alarms for r in phase.loads)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection in the bench process while a load runs; one pass after it.

    A full pass over the fleet's objects held this process's loop for 0.1-0.4 s: alarms
    due in that time were raised late, all at once, and receipts read late, so the
    bench measured its own pause instead of the hub. A load's garbage is small.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@dataclass(frozen=True, slots=True)
class _HubReading:
    """What the hub's /metrics said at one moment: its commit times and its threads' CPU."""

    at: float  # time.monotonic()
    commits: dict[float, float]
    threads: dict[str, float]

    @classmethod
    async def take(cls, hub: HubProcess) -> _HubReading:
        """Read the hub's /metrics now (empty figures if it cannot be asked)."""
        try:
            response = await asyncio.to_thread(httpx.get, f"{hub.url}/metrics", timeout=10)
            response.raise_for_status()
        except httpx.HTTPError:
            # The load's figures stand without the hub's own account of its commits.
            return cls(time.monotonic(), {}, {})
        return cls(time.monotonic(), commit_buckets(response.text), thread_cpu(response.text))

    def account(self, before: _HubReading, batch: Batch) -> None:
        """Put the hub's commits and its threads' CPU since `before` on the load's batch
        (nothing, unless the hub answered both times)."""
        if before.commits and self.commits:
            batch.hub_commits = commit_summary(before.commits, self.commits)
        if before.threads and self.threads:
            batch.hub_threads = thread_cpu_pct(before.threads, self.threads, self.at - before.at)


async def _count_alarms(database: str) -> int:
    """Alarms in the hub's database (a SQLite file or a URL), read beside the running hub."""
    db = Database(database, readers=1)
    await db.open()
    try:
        return await AlarmStore(db).count()
    finally:
        await db.close()


def run_bench(config: BenchConfig, workdir: Path, observer: Observer) -> list[PhaseResult]:
    """Run the whole bench in a new event loop; workdir holds the broker's and hubs' files."""
    return event_loop.run(Bench(config, workdir, observer).run())
