"""Alarm loads and the floors under them (the bare broker, the bare disk): raise alarms at
a rate, follow each, measure CPU and the hub's own commits.

Times are `time.monotonic()`, one clock for every process of the machine: the fleet's
loop stamps sends, receipts and neighbours' buzzers; the gateway's process stamps SMS
requests.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devices.protocol import ReceiptStatus
from devices.unit_alarms import AlertChange
from hub.settings import BrokerAddress
from hub.thread_cpu import stat_cpu_seconds
from simulator.paho_asyncio import AsyncPahoClient, Message
from simulator.registry_gen import HOUSEHOLDS_PER_UNIT
from simulator.twilio_store import Record, SentMessage
from simulator.virtual_panel import PendingEvent, VirtualPanel

MEASURES = ("bare_broker", "bare_disk", "receipt", "neighbours", "sms")
FLOORS = ("bare_broker", "bare_disk")  # measured without the hub, before each load
NEIGHBOURS = HOUSEHOLDS_PER_UNIT - 1  # every generated unit is full
_ALARM_ID = re.compile(r"Alarm (a-[0-9a-z]+)\.")


@dataclass(slots=True)
class LoadResult:
    """One load: latencies in seconds per measure, and what became of its alarms."""

    name: str
    offered_rate: float | None  # None for the storm: all at once
    alarms: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    accepted: int = 0
    lost: int = 0
    duplicate_receipts: int = 0
    joined: int = 0  # accepted into an alarm an earlier press had opened
    resent: int = 0  # copies a panel sent again before its receipt came
    neighbours_missing: int = 0
    sms_missing: int = 0
    sms_per_alarm: float = 0.0
    raise_s: float = 0.0  # first alarm sent → last alarm sent
    last_receipt_s: float = 0.0  # first alarm sent → last receipt
    cpu_pct: dict[str, float] = field(default_factory=dict)
    unsettled: int = 0  # alarms still on their way when the load's drain time ran out
    hub_commits: dict[str, float | None] = field(default_factory=dict)  # commit_summary()
    hub_threads: dict[str, float] = field(default_factory=dict)  # % of a core, by thread

    @property
    def throughput(self) -> float:
        """Alarms receipted `accepted` per second, first send to last receipt."""
        return self.accepted / self.last_receipt_s if self.last_receipt_s > 0 else 0.0


# -- processes ----------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far; None means this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    return stat_cpu_seconds(f"/proc/{pid}/stat")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class CpuWindow:
    """CPU use of named processes between start and `pct()`, as % of one core."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.start = time.monotonic()
        self.used = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def pct(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.start, 1e-9)
        return {
            name: round(100 * (cpu_seconds(pid) - self.used[name]) / wall, 1)
            for name, pid in self.pids.items()
        }


async def paced(count: int, rate: float, fire: Callable[[int], None]) -> None:
    """Call fire(0 … count-1) at `rate` per second from now, catching up if the loop lags."""
    loop = asyncio.get_running_loop()
    start, i = loop.time(), 0
    while i < count:
        due = min(count, int((loop.time() - start) * rate) + 1)
        while i < due:
            fire(i)
            i += 1
        if i < count:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))


# -- the bare broker ----------------------------------------------------------------------


class BrokerProbe:
    """A client publishing QoS 1 to a topic it subscribes to: the broker's round trip."""

    def __init__(self, address: BrokerAddress) -> None:
        self.topic = f"tenhub-bench/probe/{os.getpid()}"
        self.client = AsyncPahoClient(
            f"tenhub-bench-probe-{os.getpid()}", address.host, address.port,
            username=address.username, password=address.password, on_message=self._received,
        )  # fmt: skip
        self._sent: dict[int, float] = {}
        self._rtts: list[float] = []
        self._padding = b" " * 100  # about an alarm event's size

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe([(self.topic, 1)])

    async def run(self, count: int, rate: float, timeout: float) -> list[float]:
        """Round trips (seconds) of `count` publishes offered at `rate` per second."""
        self._sent, self._rtts = {}, []

        def send(i: int) -> None:
            self._sent[i] = time.monotonic()
            self.client.publish_nowait(self.topic, b"%d " % i + self._padding, qos=1)

        await paced(count, rate, send)
        deadline = time.monotonic() + timeout
        while len(self._rtts) < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return list(self._rtts)

    def _received(self, message: Message) -> None:
        sent = self._sent.pop(int(message.payload.split(b" ", 1)[0]), None)
        if sent is not None:
            self._rtts.append(time.monotonic() - sent)

    async def stop(self) -> None:
        await self.client.disconnect()


# -- the bare disk ------------------------------------------------------------------------


def commit_times_s(directory: Path, commits: int = 300, rate: float | None = None) -> list[float]:
    """Seconds each of `commits` one-row SQLite commits (WAL, synchronous=FULL, as the
    hub's) took in a database file of its own in `directory`, offered at `rate` per second
    (None: one after another). Blocking: run it in a thread.

    The floor of what the hub's writer pays for every durable write on this disk, as the
    bare broker is the floor of every round trip. A disk may answer most fsyncs in a
    fraction of a millisecond and hold one now and then for a second: paced over a
    load's length, the probe meets what the hub's commits meet at that rate.
    """
    path = directory / "commit-floor.db"
    conn = sqlite3.connect(path, isolation_level=None)
    took: list[float] = []
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (v INTEGER)")
        start = time.monotonic()
        for i in range(commits):
            if rate is not None and (wait := start + i / rate - time.monotonic()) > 0:
                time.sleep(wait)
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
            conn.execute("COMMIT")
            took.append(time.perf_counter() - started)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    return took


# -- the hub's own commits ----------------------------------------------------------------

_COMMIT_BUCKET = re.compile(r'^tenhub_db_commit_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)
SLOW_COMMIT_MS = 10.0  # the bound of `over_10ms`: such a commit holds a receipt past every target


def commit_buckets(metrics_text: str) -> dict[float, float]:
    """The hub's commit-time histogram from its /metrics: commits so far per upper bound (s)."""
    return {float(le): float(n) for le, n in _COMMIT_BUCKET.findall(metrics_text)}


def commit_summary(
    before: dict[float, float], after: dict[float, float]
) -> dict[str, float | None]:
    """The hub's commits between two readings: how many, how many took over
    SLOW_COMMIT_MS, and the bucket bound the slowest stayed within (ms; None: over the
    last bound, or no commits)."""
    bounds = sorted(after)
    if not bounds:
        return {}
    delta = {b: after[b] - before.get(b, 0.0) for b in bounds}
    total = delta[bounds[-1]]  # the +Inf bucket: every commit
    fast = max((delta[b] for b in bounds if b <= SLOW_COMMIT_MS / 1000), default=0.0)
    slowest = next((b for b in bounds if delta[b] == total), None) if total else None
    return {
        "commits": total,
        "over_10ms": total - fast,
        "slowest_at_most_ms": None if slowest in (None, float("inf")) else slowest * 1000,
    }


_THREAD_CPU = re.compile(r'^tenhub_thread_cpu_seconds_total\{thread="([^"]+)"\} (\S+)$', re.M)


def thread_cpu(metrics_text: str) -> dict[str, float]:
    """The CPU seconds of each of the hub's threads so far, from its /metrics."""
    return {name: float(n) for name, n in _THREAD_CPU.findall(metrics_text)}


def thread_cpu_pct(
    before: dict[str, float], after: dict[str, float], wall_s: float
) -> dict[str, float]:
    """Each thread's CPU between two readings `wall_s` apart, as % of one core, busiest
    first; threads under 0.5% left out."""
    if wall_s <= 0:
        return {}
    pct = {name: 100 * (after[name] - before.get(name, 0.0)) / wall_s for name in after}
    return {
        name: round(value, 1)
        for name, value in sorted(pct.items(), key=lambda kv: -kv[1]) if value >= 0.5
    }  # fmt: skip


# -- alarms through the hub ---------------------------------------------------------------


class AlarmWatch:
    """When each alarm's neighbours sounded and its SMS reached the gateway (monotonic s)."""

    def __init__(self) -> None:
        self.alerts: Counter[str] = Counter()
        self.last_alert: dict[str, float] = {}
        self.first_sms: dict[str, float] = {}
        self.sms: Counter[str] = Counter()

    def on_alert(self, _panel_id: str, change: AlertChange) -> None:
        """In the fleet's loop, as a neighbour's buzzer starts (the panel's `alerted_at`)."""
        if change.started:
            alarm_id = change.alert.alarm_id
            self.alerts[alarm_id] += 1
            self.last_alert[alarm_id] = time.monotonic()

    def on_record(self, record: Record) -> None:
        """As the gateway tells of an SMS request it accepted (from another thread)."""
        if isinstance(record, SentMessage) and (match := _ALARM_ID.search(record.body)):
            # When the request reached the gateway: its own parsing is not the hub's time.
            self.first_sms.setdefault(match[1], record.arrived or time.monotonic())
            self.sms[match[1]] += 1


@dataclass(slots=True)
class Batch:
    """The alarms of one load as raised, with the CPU used until they had settled."""

    name: str
    rate: float | None
    events: list[PendingEvent]
    bare: list[float] | None = None
    disk: list[float] | None = None
    hub_commits: dict[str, float | None] = field(default_factory=dict)
    hub_threads: dict[str, float] = field(default_factory=dict)  # thread_cpu_pct()
    cpu_pct: dict[str, float] = field(default_factory=dict)
    unsettled: int = 0  # alarms not yet complete when the drain gave up


class AlarmLoad:
    """Raises alarms from a fleet and follows each to its receipt, neighbours and SMS."""

    def __init__(self, watch: AlarmWatch) -> None:
        self.watch = watch

    async def run(
        self, name: str, panels: list[VirtualPanel], kind: str, rate: float | None,
        pids: dict[str, int | None], drain_s: float,
    ) -> Batch:  # fmt: skip
        """Raise one alarm per panel, at `rate` per second or (None) all at once; drain."""
        events: list[PendingEvent] = []
        cpu = CpuWindow(pids)
        if rate is None:
            events = [panel.raise_alarm(kind) for panel in panels]
        else:
            await paced(len(panels), rate, lambda i: events.append(panels[i].raise_alarm(kind)))
        unsettled = await self.drain(events, drain_s)
        return Batch(name, rate, events, cpu_pct=cpu.pct(), unsettled=unsettled)

    def _complete(self, event: PendingEvent) -> bool:
        receipt = event.receipt
        if not event.done or receipt is None:
            return event.done
        aid = receipt.alarm_id
        if receipt.status != ReceiptStatus.ACCEPTED or aid is None:
            return True
        return self.watch.alerts[aid] >= NEIGHBOURS and aid in self.watch.first_sms

    async def drain(self, events: list[PendingEvent], timeout: float) -> int:
        """Wait until every alarm has its receipt, neighbours and SMS; returns those still not."""
        waiting = [e for e in events if not self._complete(e)]
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            waiting = [e for e in waiting if not self._complete(e)]
        return len(waiting)

    def collect(self, batch: Batch, seen: set[str]) -> LoadResult:
        """The load's figures so far; `seen` holds the alarm ids of earlier loads, to see joins."""
        events = batch.events
        result = LoadResult(
            batch.name, batch.rate, len(events), cpu_pct=batch.cpu_pct, unsettled=batch.unsettled,
            hub_commits=batch.hub_commits, hub_threads=batch.hub_threads,
        )  # fmt: skip
        receipts, neighbours, sms = [], [], []
        sent = [e.first_sent_at for e in events if e.first_sent_at is not None]
        received = [e.receipt_at for e in events if e.receipt_at is not None]
        for event in events:
            result.resent += max(event.attempts - 1, 0)
            receipt, start = event.receipt, event.first_sent_at
            if receipt is None or start is None:
                continue
            if receipt.status == ReceiptStatus.DUPLICATE:
                result.duplicate_receipts += 1
            if receipt.status != ReceiptStatus.ACCEPTED or receipt.alarm_id is None:
                continue
            aid = receipt.alarm_id
            result.accepted += 1
            result.joined += aid in seen
            seen.add(aid)
            receipts.append(event.latency_s or 0.0)
            if self.watch.alerts[aid] >= NEIGHBOURS:
                neighbours.append(self.watch.last_alert[aid] - start)
            else:
                result.neighbours_missing += 1
            if aid in self.watch.first_sms:
                sms.append(self.watch.first_sms[aid] - start)
                result.sms_per_alarm += self.watch.sms[aid]
            else:
                result.sms_missing += 1
        result.lost = result.alarms - result.accepted
        result.samples = {"receipt": receipts, "neighbours": neighbours, "sms": sms}
        if batch.bare is not None:
            result.samples["bare_broker"] = batch.bare
        if batch.disk is not None:
            result.samples["bare_disk"] = batch.disk
        if sms:
            result.sms_per_alarm = round(result.sms_per_alarm / len(sms), 2)
        if sent:
            result.raise_s = max(sent) - min(sent)
        if sent and received:
            result.last_receipt_s = max(received) - min(sent)
        return result
