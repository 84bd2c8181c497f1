"""CPU time of this process's threads by name, read from Linux's /proc.

The hub's time goes to two threads above all: the event loop (which answers panels, sends
notifications and serves the web) and the database writer (every commit). The process's
CPU alone cannot tell an operator which of the two is full; this can.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# A pool's threads are numbered ("sqlite-reader_0", "asyncio_3"): counted under the pool.
_NUMBERED = re.compile(r"_\d+$")
try:
    _TICK_S = 1 / os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):  # not a POSIX system
    _TICK_S = 0.01


def thread_name(name: str) -> str:
    """The name a thread's CPU is counted under: its pool's, for a pool's numbered thread."""
    return _NUMBERED.sub("", name)


def stat_cpu_seconds(path: str) -> float:
    """User + system CPU seconds so far of the process or thread whose /proc `stat` file
    this is; OSError if it cannot be read (gone, or no /proc)."""
    with open(path, "rb") as f:
        stat = f.read()
    # Fields after the name (which may hold spaces and parentheses): utime is the 12th.
    fields = stat.rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def thread_cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds so far of each live thread of this process, summed by
    `thread_name`; {} where /proc cannot tell (not Linux)."""
    seconds: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.native_id is None:
            continue  # not started yet
        try:
            used = stat_cpu_seconds(f"/proc/self/task/{thread.native_id}/stat")
        except OSError:
            continue  # ended meanwhile, or no /proc here
        name = thread_name(thread.name)
        seconds[name] = seconds.get(name, 0.0) + used
    return seconds


class ThreadCpuCollector(Collector):
    """`tenhub_thread_cpu_seconds_total{thread=…}`, read at each scrape."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tenhub_thread_cpu_seconds",
            "CPU seconds used by the hub process's threads, by name: MainThread runs the"
            " event loop, sqlite-writer every database write (threads that ended no longer"
            " count)",
            labels=["thread"],
        )
        for name, seconds in sorted(thread_cpu_seconds().items()):
            family.add_metric([name], seconds)
        yield family
