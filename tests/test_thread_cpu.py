"""Where the hub's CPU goes: its threads' CPU time by name, as /metrics gives it."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from hub.metrics import HubMetrics
from hub.thread_cpu import thread_cpu_seconds, thread_name

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc")


def _burn(stop: threading.Event) -> None:
    """Use the CPU until told to stop."""
    while not stop.is_set():
        sum(range(1000))


def test_a_busy_pool_shows_its_cpu_under_the_pools_name_and_an_idle_thread_little() -> None:
    assert thread_name("sqlite-reader_0") == "sqlite-reader"
    assert thread_name("sqlite-writer") == "sqlite-writer"
    stop = threading.Event()
    busy = [threading.Thread(target=_burn, args=(stop,), name=f"test-busy_{i}") for i in (0, 1)]
    idle = threading.Thread(target=stop.wait, args=(30,), name="test-idle")
    try:
        for thread in (*busy, idle):
            thread.start()
        deadline = time.monotonic() + 10
        while (seconds := thread_cpu_seconds()).get("test-busy", 0.0) < 0.5:
            if time.monotonic() > deadline:
                pytest.fail(f"the two busy threads' CPU never reached 0.5 s: {seconds}")
            time.sleep(0.02)
        assert seconds["test-idle"] < 0.1
        assert "MainThread" in seconds
        assert "test-busy_0" not in seconds  # counted under the pool's name only
    finally:
        stop.set()
        for thread in (*busy, idle):
            thread.join()


def test_the_metrics_carry_each_threads_cpu() -> None:
    text = HubMetrics().render().decode()
    assert "# TYPE tenhub_thread_cpu_seconds_total counter" in text
    assert 'tenhub_thread_cpu_seconds_total{thread="MainThread"} ' in text
