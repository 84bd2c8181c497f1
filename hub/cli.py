"""The `tenhub` command: serve, demo, check-config."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from hub import event_loop
from hub.alarms.policy import DEFAULT, DEFAULT_POLICIES, PolicySet, format_duration
from hub.problems import ConfigError, Problem
from hub.registry.model import Registry, load_registry
from hub.settings import Settings, load_settings

app = typer.Typer(
    help="tenhub: the hub of a ten-household joint alarm network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: a problem is one line however narrow the terminal, so it can be grepped.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

T = TypeVar("T")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file; every key can also be set by env."),
]
RegistryOption = Annotated[
    Path | None, typer.Option("--registry", "-r", help="Registry YAML (TENHUB_REGISTRY).")
]
PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", "-p", help="Escalation policy YAML (TENHUB_POLICY)."),
]


def _print_problems(problems: list[Problem]) -> None:
    for p in problems:
        style = "red" if p.is_error else "yellow"
        err.print(p.format(), style=style, markup=False)


def _settings_or_exit(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        _print_problems(exc.problems)
        raise typer.Exit(2) from None


def _registry_or_exit(path: str | Path | None) -> Registry:
    if path is None:
        err.print("no registry given: pass --registry FILE or set TENHUB_REGISTRY", style="red")
        raise typer.Exit(2)
    try:
        return load_registry(path)
    except ConfigError as exc:
        _print_problems(exc.problems)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None, registry: RegistryOption = None, policy: PolicyOption = None
) -> None:
    """Run the hub: MQTT ingest, storage, escalation, notifications and the web API.

    Without TENHUB_BROKER_URL (or broker_url in the config) it starts the embedded broker.
    Without a policy file it escalates by the built-in ladders.
    """
    from hub.app import Hub
    from hub.logs import setup_logging

    settings = _settings_or_exit(
        config,
        registry=str(registry) if registry else None,
        policy=str(policy) if policy else None,
    )
    reg = _registry_or_exit(settings.registry)
    policies = _policies_or_exit(settings.policy)
    setup_logging(settings.log_level, settings.log_format)
    try:
        hub = Hub(settings, reg, policies=policies)
        del reg  # the hub holds the PINs as hashes: the registry read with them goes now
        event_loop.run(_serve(hub))
    except OSError as exc:
        err.print(f"tenhub: {exc.strerror or exc}", style="red")
        raise typer.Exit(1) from None


async def _serve(hub: object) -> None:
    # The registry, policies and web app are built once and live as long as the process:
    # out of the collector's full passes, which take tens of ms with 10,000 panels.
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, hub.stop)  # type: ignore[attr-defined]
    await hub.run()  # type: ignore[attr-defined]


def _policies_or_exit(path: str | None) -> PolicySet:
    if path is None:
        return DEFAULT_POLICIES
    from hub.alarms.policy_file import load_policies

    try:
        return load_policies(path)
    except ConfigError as exc:
        _print_problems(exc.problems)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(
    config: ConfigOption = None, registry: RegistryOption = None, policy: PolicyOption = None
) -> None:
    """Check the settings, the registry and the policies; print every problem with its place."""
    from hub.alarms.policy_file import parse_policies
    from hub.registry.model import parse_registry

    try:
        settings = load_settings(
            config,
            registry=str(registry) if registry else None,
            policy=str(policy) if policy else None,
        )
    except ConfigError as exc:
        _print_problems(exc.problems)
        raise typer.Exit(1) from None
    if config is not None:
        out.print(f"{config}: OK")
    # Every file is checked even when one is bad: one run shows all the problems.
    usable = []
    if settings.registry is None:
        err.print("no registry given: pass --registry FILE or set TENHUB_REGISTRY", style="red")
        usable.append(False)
    else:
        path = Path(settings.registry)
        usable.append(_check_file(path, "registry", parse_registry, _registry_summary))
    if settings.policy is None:
        out.print(f"policy: built-in {_ladder_summary(DEFAULT_POLICIES)}")
    else:
        path = Path(settings.policy)
        usable.append(_check_file(path, "policy file", parse_policies, _policy_summary))
    if not all(usable):
        raise typer.Exit(1)


def _check_file(
    path: Path,
    what: str,
    parse: Callable[[str, str], tuple[T | None, list[Problem]]],
    summary: Callable[[T], str],
) -> bool:
    """Print a file's problems and then its summary or its count of problems; True if usable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        err.print(f"{path}: cannot read {what}: {exc.strerror}", style="red")
        return False
    except UnicodeDecodeError:
        err.print(f"{path}: cannot read {what}: it is not UTF-8 text", style="red")
        return False
    parsed, problems = parse(text, str(path))
    _print_problems(problems)
    errors = sum(p.is_error for p in problems)
    warnings = len(problems) - errors
    if parsed is None or errors:
        err.print(
            f"{path}: {_plural(errors, 'error')}, {_plural(warnings, 'warning')}", style="red"
        )
        return False
    out.print(
        f"{path}: OK: {summary(parsed)}"
        + (f" ({_plural(warnings, 'warning')})" if warnings else "")
    )
    return True


def _registry_summary(registry: Registry) -> str:
    c = registry.counts()
    return (
        f"{_plural(c['units'], 'unit')}, {_plural(c['households'], 'household')},"
        f" {_plural(c['panels'], 'panel')}, {_plural(c['patrols'], 'patrol')},"
        f" {_plural(c['police_desks'], 'police desk')}, {_plural(c['command'], 'command post')}"
    )


def _policy_summary(policies: PolicySet) -> str:
    n = len(policies.policies)
    names = ", ".join(policies.policies)
    return f"{n} {'policy' if n == 1 else 'policies'} ({names}), {_ladder_summary(policies)}"


def _ladder_summary(policies: PolicySet) -> str:
    """`default ladder 0s → 1m → 5m …`: when the default policy's steps fire."""
    steps = policies[DEFAULT].steps
    return "default ladder " + " → ".join(format_duration(step.after_ms) for step in steps)


@app.command()
def demo(
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            "-r",
            help="Registry of the virtual fleet (default: a city generated for the pace).",
        ),
    ] = None,
    every: Annotated[float, typer.Option(help="Seconds between stories.")] = 4.0,
    loops: Annotated[
        int, typer.Option(help="Stop after this many loops of stories (0: run on).")
    ] = 0,
    alarms: Annotated[int, typer.Option(help="Stop after this many alarms (0: run on).")] = 0,
    http_addr: Annotated[str, typer.Option(help="Where the web side listens.")] = (
        "127.0.0.1:8080"
    ),
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Keep the database here (default: a temp dir, removed on exit)."),
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temp data dir on exit.")] = False,
    tiles: Annotated[
        str | None,
        typer.Option(
            help="XYZ tile URL for the desk map (default: $TENHUB_MAP_TILE_URL, else tiles"
            " the demo draws itself)."
        ),
    ] = None,
) -> None:
    """Everything on one machine: embedded broker, hub, a fleet of virtual panels, stories."""
    from hub.logs import setup_logging
    from simulator.demo import DemoOptions, run_demo

    setup_logging("warning")  # the demo's own lines tell the story; logs only for trouble
    reg = _registry_or_exit(_demo_registry(registry)) if registry is not None else None
    options = DemoOptions(
        registry=reg,
        every_s=every,
        loops=loops,
        alarms=alarms,
        http_addr=http_addr,
        data_dir=data_dir,
        keep=keep,
        tile_url=tiles or os.environ.get("TENHUB_MAP_TILE_URL") or None,
        tile_attribution=os.environ.get("TENHUB_MAP_TILE_ATTRIBUTION", ""),
    )
    raise typer.Exit(asyncio.run(run_demo(options, out)))


def _demo_registry(path: Path) -> Path:
    """The given registry; the example one next to the source tree when run from elsewhere."""
    if path.exists() or path.is_absolute():
        return path
    beside_source = Path(__file__).resolve().parent.parent / path
    return beside_source if beside_source.exists() else path


def _mount_subcommands() -> None:
    from hub.accounts.user_cli import users
    from hub.panels.panel_cli import broker_config, panels
    from simulator.cli import sim
    from simulator.cli_bench import bench

    app.add_typer(users, name="user")
    app.command("bench")(bench)
    app.add_typer(panels, name="panel")
    app.command("broker-config")(broker_config)
    app.add_typer(sim, name="sim")


_mount_subcommands()


def main() -> None:
    """Entry point of the `tenhub` console script."""
    app()
