"""`tenhub bench`: run the benchmark, print as it goes, write bench.json, bench.md, latency.png."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from hub.settings import BrokerAddress
from hub.storage.db import database_url, display_target
from simulator.bench import (
    FULL,
    QUICK,
    machine_info,
    python_speed_ns,
    run_bench,
)
from simulator.bench_load import MEASURES, LoadResult, commit_times_s
from simulator.bench_report import (
    HUB_THREADS,
    bench_doc,
    percentiles_ms,
    write_outputs,
)

err = Console(stderr=True, highlight=False, soft_wrap=True)


class ConsoleObserver:
    """Prints the bench's progress: a bar while panels connect, a line per load."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def note(self, text: str) -> None:
        self.console.print(text, style="dim", markup=False)

    def phase_started(self, panels: int, hub_pid: int) -> None:
        self.note(f"{panels:,} panels: hub running (pid {hub_pid}); connecting the fleet")

    def connecting(self, done: int, total: int) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("connecting panels"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self.console, transient=True,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task("connect", total=total)
        if self._task is not None:
            self._progress.update(self._task, completed=done)
        if done >= total:
            self._progress.stop()
            self._progress = None

    def load_started(self, panels: int, name: str, alarms: int) -> None:
        what = (
            "all at once" if name == "storm"
            else f"at {name}, broker round trips and disk commits first"
        )  # fmt: skip
        self.console.print(f"  {name:>6}: {alarms:,} alarms {what} …", markup=False)

    def load_done(self, panels: int, load: LoadResult) -> None:
        parts = []
        for name, label in (("bare_broker", "bare"), ("bare_disk", "disk"),
                            ("receipt", "receipt"), ("neighbours", "neighbours"),
                            ("sms", "SMS")):  # fmt: skip
            if name in load.samples:
                s = percentiles_ms(load.samples[name])
                if s["count"]:
                    parts.append(f"{label} {s['p50_ms']:.2f}/{s['p99_ms']:.2f}")
        style = "red" if load.lost else "green"
        self.console.print(
            f"          p50/p99 ms: {', '.join(parts)}; {load.throughput:.0f} alarms/s, "
            f"last receipt {load.last_receipt_s:.2f} s, [{style}]{load.lost} lost[/{style}]",
            highlight=False,
        )
        if threads := load.hub_threads:
            loop, writer = (threads.get(name, 0.0) for name in HUB_THREADS)
            self.console.print(
                f"          hub's CPU, % of a core: {load.cpu_pct.get('hub', 0.0):g} "
                f"(event loop {loop:g}, writer {writer:g})", highlight=False,
            )  # fmt: skip


def summary_table(phase: dict[str, Any]) -> Table:
    """A fleet's final figures: p50 / p99 in ms per measure and load, throughput, lost."""
    table = Table(title=f"{phase['panels']:,} panels, p50 / p99 ms", title_justify="left")
    table.add_column("load")
    for label in ("bare broker", "bare disk", "receipt", "9 neighbours", "SMS"):
        table.add_column(label, justify="right")
    table.add_column("alarms/s", justify="right")
    table.add_column("lost", justify="right")
    for load in phase["loads"]:
        cells = []
        for name in MEASURES:
            s = load["measures"].get(name)
            cells.append(f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}" if s and s["count"] else "–")
        lost = f"[red]{load['lost']}[/red]" if load["lost"] else "0"
        table.add_row(load["name"], *cells, f"{load['throughput_per_s']:g}", lost)
    return table


def bench(
    out: Annotated[
        Path, typer.Option("--out", help="Directory for bench.json, bench.md, latency.png.")
    ] = Path("bench-results"),
    quick: Annotated[
        bool, typer.Option("--quick", help="1,000 panels, ~2 s per load: under a minute, for CI.")
    ] = False,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Use this broker (mqtt://host:port or mqtt://user:pass@host:port) "
            "instead of a Mosquitto of its own."
        ),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db-url",
            help="Keep the hub's state in PostgreSQL (postgresql://user:pass@host/db): a "
            "fresh database per fleet size on that server, dropped afterwards. "
            "Default: a SQLite file.",
        ),
    ] = None,
) -> None:
    """Measure alarm latency and throughput through the hub, beside the bare broker.

    Exits 1 when an alarm was lost or not stored; timings never fail the run.
    """
    from hub.logs import setup_logging

    shown = None  # the broker's URL without its password, for the report
    if broker is not None:
        try:
            address = BrokerAddress.parse(broker)
        except ValueError as exc:
            err.print(f"tenhub bench: {exc}", style="red", markup=False)
            raise typer.Exit(2) from None
        if address.tls:
            err.print("tenhub bench: mqtts:// is not supported by the fleet", style="red")
            raise typer.Exit(2)
        shown = address.display()
    database = "SQLite"
    if db_url is not None:
        try:
            if database_url(db_url).get_backend_name() != "postgresql":
                raise ValueError(f"{display_target(db_url)}: --db-url takes a postgresql:// URL")
        except ValueError as exc:
            err.print(f"tenhub bench: {exc}", style="red", markup=False)
            raise typer.Exit(2) from None
        database = f"PostgreSQL at {display_target(db_url)}"
    setup_logging("error")
    config = dataclasses.replace(QUICK if quick else FULL, broker_url=broker, db_url=db_url)
    machine = machine_info(shown)
    machine["database"] = database
    err.print(
        f"tenhub bench ({'quick' if quick else 'full'}): {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, Python {machine['python']}, {machine['broker']}, "
        f"{machine['database']}",
        markup=False,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tenhub-bench-") as workdir:
        # On the disk the hubs' databases will use, before anything else runs.
        commits = percentiles_ms(commit_times_s(Path(workdir)))
        floor = machine["sqlite_commit_ms"] = {"p50": commits["p50_ms"], "p99": commits["p99_ms"]}
        err.print(
            f"an SQLite commit on this disk (WAL, synchronous=FULL): p50 {floor['p50']:g} ms,"
            f" p99 {floor['p99']:g} ms",
            style="dim",
            markup=False,
        )
        speed = machine["python_ns"] = {"start": python_speed_ns()}
        err.print(
            f"a line of Python here (sum(range(10)), best of 5): {speed['start']:g} ns",
            style="dim",
            markup=False,
        )
        phases = run_bench(config, Path(workdir), ConsoleObserver(err))
        speed["end"] = python_speed_ns()
        err.print(f"the same line at the end: {speed['end']:g} ns", style="dim", markup=False)
    doc = bench_doc(phases, config, machine, time.monotonic() - started)
    paths = write_outputs(doc, out)
    for phase in doc["phases"]:
        err.print(summary_table(phase))
    err.print(f"wrote {', '.join(str(p) for p in paths)} in {doc['elapsed_s']:g} s", markup=False)
    for t in doc["targets"]:
        mark = {True: "[green]met[/green]", False: "[red]not met[/red]", None: "not measured"}
        err.print(f"  {mark[t['met']]}  {escape(t['target'])}: {escape(t['measured'])}")
    stored = all(p["alarms_in_db"] == p["alarms_raised"] for p in doc["phases"])
    lost = sum(x["lost"] for p in doc["phases"] for x in p["loads"])
    if lost or not stored:
        err.print(f"tenhub bench: {lost} alarms lost; stored as raised: {stored}", style="red")
        raise typer.Exit(1)
