"""`tenhub sim …`: the simulator's parts, run on their own."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from simulator.twilio_gateway import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioGateway
from simulator.twilio_store import PlacedCall, Record

sim = typer.Typer(
    help="The simulator: virtual panels by the thousand, scenarios, a local SMS gateway.",
    no_args_is_help=True,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _show(record: Record) -> None:
    if isinstance(record, PlacedCall):
        out.print(f"Call → {record.to}: {record.twiml or record.url}", markup=False)
    else:
        out.print(f"SMS → {record.to}: {record.body}", markup=False)


@sim.command("gateway")
def gateway(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    account_sid: Annotated[
        str, typer.Option(help="Account SID the hub must authenticate with.")
    ] = DEFAULT_ACCOUNT_SID,
    auth_token: Annotated[
        str, typer.Option(help="Auth token; also signs the webhooks it sends.")
    ] = DEFAULT_AUTH_TOKEN,
) -> None:
    """Run the local Twilio gateway in the foreground, printing each SMS and call; Ctrl-C stops."""
    gw = TwilioGateway(account_sid, auth_token, host, port)
    gw.subscribe(_show)
    try:
        gw.start()
    except OSError as exc:
        err.print(
            f"tenhub sim gateway: cannot listen on {host}:{port}: {exc.strerror or exc}",
            style="red",
            markup=False,
        )
        raise typer.Exit(1) from None
    out.print(f"Twilio gateway listening on {gw.base_url}", markup=False)
    out.print("Give the hub:", markup=False)
    out.print(
        f"  TENHUB_TWILIO_API_BASE={gw.base_url} TWILIO_ACCOUNT_SID={account_sid} "
        f"TWILIO_AUTH_TOKEN={auth_token}",
        markup=False,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        gw.stop()
    out.print("Twilio gateway stopped", markup=False)


def _mount_fleet() -> None:
    from simulator.cli_fleet import fleet_app

    sim.add_typer(fleet_app)  # `tenhub sim fleet`, `tenhub sim make-registry`


_mount_fleet()


@sim.command("scenario")
def scenario(
    files: Annotated[list[Path], typer.Argument(help="Scenario files (YAML).", exists=True)],
) -> None:
    """Play scenarios against a real hub (its clock sped up) and check what they expect.

    Exits 1 when any expectation did not hold, 2 when a file is not a valid scenario.
    """
    import asyncio

    from hub.logs import setup_logging
    from hub.problems import ConfigError
    from simulator.scenario_runner import run_scenario

    setup_logging("error")
    failed = 0
    for path in files:
        try:
            report = asyncio.run(run_scenario(path, out))
        except ConfigError as exc:
            for problem in exc.problems:
                err.print(problem.format(), style="red", markup=False)
            raise typer.Exit(2) from None
        failed += not report.passed
        out.print()
    if len(files) > 1:
        out.print(f"{len(files) - failed}/{len(files)} scenarios passed")
    raise typer.Exit(1 if failed else 0)
