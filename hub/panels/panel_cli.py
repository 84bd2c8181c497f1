"""`tenhub panel …` (provision, list, revoke) and `tenhub broker-config`.

Exit codes: 0 done, 1 the request cannot be done (unknown panel, no database, an id not
safe in a broker file), 2 the settings or the registry cannot be used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import quote

import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from devices import topics
from hub.broker.broker_config import (
    CONF_FILE,
    HUB_PASSWORD_FILE,
    HUB_USERNAME,
    BrokerConfigError,
    TlsListener,
    hub_password,
    write_broker_config,
)
from hub.broker.credential_store import CredentialStore, PanelSecrets
from hub.broker.mosquitto_passwords import hash_mosquitto_password
from hub.clock import SystemClock
from hub.problems import ConfigError
from hub.registry.model import PanelPlace, Registry, load_registry
from hub.settings import Settings, load_settings
from hub.storage.db import Database, display_target
from hub.storage.migrations import SchemaTooNew

panels = typer.Typer(
    help="Panel credentials: what a panel logs in to the broker with and signs events with.",
    no_args_is_help=True,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
output = Console(highlight=False, soft_wrap=True)

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file; every key can also be set by env."),
]
RegistryOption = Annotated[
    Path | None, typer.Option("--registry", "-r", help="Registry YAML (TENHUB_REGISTRY).")
]
RELOAD_HINT = "run `tenhub broker-config --out DIR` again and reload Mosquitto (kill -HUP <pid>)"


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"tenhub: {message}", style="red", markup=False)
    raise typer.Exit(code)


def _note(message: str) -> None:
    err.print(message, style="yellow", markup=False)


def _settings(config: Path | None, registry: Path | None) -> Settings:
    try:
        return load_settings(config, registry=str(registry) if registry else None)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem.format(), style="red", markup=False)
        raise typer.Exit(2) from None


def _registry(settings: Settings) -> Registry:
    if settings.registry is None:
        _fail("no registry given: pass --registry FILE or set TENHUB_REGISTRY", 2)
    try:
        return load_registry(settings.registry)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem.format(), style="red", markup=False)
        raise typer.Exit(2) from None


def _with_credentials(
    settings: Settings, work: Callable[[CredentialStore], Awaitable[T]], *, create: bool = False
) -> T:
    """Run work on the credentials of the configured database; database trouble → exit 1."""
    if not create and not settings.db_url and not Path(settings.db_path).exists():
        _fail(
            f"no database at {settings.db_path}: check --config or TENHUB_DB_PATH"
            " (provisioning a panel creates it)"
        )

    async def main() -> T:
        db = Database(settings.database())
        await db.open()
        try:
            return await work(CredentialStore(db))
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except SchemaTooNew as exc:
        _fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"cannot use the database {display_target(settings.database())}: {exc}")


# --- provision -----------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _panel_broker(
    settings: Settings, host: str | None, port: int | None, tls: bool | None = None
) -> dict[str, Any] | None:
    """Where the panel finds the broker: the options, else the hub's broker unless loopback."""
    known = settings.broker()
    if host is None and known is not None and not _is_loopback(known.host):
        host = known.host
        port = port or (known.port if tls in (None, known.tls) else None)
    if host is None:
        return None
    if tls is None:
        tls = known.tls if known is not None and known.host == host else False
    return {"host": host, "port": port or (8883 if tls else 1883), "tls": tls}


def device_settings(
    secrets: PanelSecrets, place: PanelPlace, broker: dict[str, Any] | None
) -> dict[str, Any]:
    """Everything a panel needs to join, as one JSON-ready object (also what the QR code holds)."""
    panel_id = secrets.panel_id
    found: dict[str, Any] = {"v": 1, "panel_id": panel_id}
    if broker is not None:
        found["broker"] = broker
    found |= {
        "client_id": panel_id,
        "username": panel_id,
        "password": secrets.password,
        "hmac_key": secrets.hmac_key.hex(),
        "require_signed": secrets.require_signed,
        "unit_id": place.unit.id,
        "household_id": place.household.id,
        "topics": {
            "event": topics.event_topic(panel_id),
            "status": topics.status_topic(panel_id),
            "heartbeat": topics.heartbeat_topic(panel_id),
            "receipt": topics.receipt_topic(panel_id),
            "alert": topics.unit_alert_topic(place.unit.id),
        },
    }
    return found


def _print_qr(text: str) -> None:
    try:
        import qrcode
    except ImportError:
        _note("no QR code: the qrcode package is not installed")
        return
    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(text)
    qr.make(fit=True)
    qr.print_ascii(out=sys.stdout, tty=False, invert=True)
    sys.stdout.flush()


def _print_settings(found: dict[str, Any]) -> None:
    broker = found.get("broker")
    where = (
        f"{'mqtts' if broker['tls'] else 'mqtt'}://{broker['host']}:{broker['port']}"
        if broker
        else "not given (pass --broker-host and --broker-port)"
    )
    signing = "required" if found["require_signed"] else "optional"
    lines = [
        f"panel      {found['panel_id']} (unit {found['unit_id']},"
        f" household {found['household_id']})",
        f"broker     {where}",
        f"client id  {found['client_id']}",
        f"username   {found['username']}",
        f"password   {found['password']}",
        f"hmac key   {found['hmac_key']} (hex; signed events {signing})",
        "topics",
        *(f"  {name:<10}{topic}" for name, topic in found["topics"].items()),
    ]
    for line in lines:
        output.print(line, markup=False)


@panels.command()
def provision(
    panel_id: Annotated[str, typer.Argument(help="The panel's id, as in the registry.")],
    no_signing: Annotated[
        bool, typer.Option("--no-signing", help="Accept the panel's events unsigned.")
    ] = False,
    broker_host: Annotated[
        str | None, typer.Option(help="Broker host the panel connects to.")
    ] = None,
    broker_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Broker port for the panel.")
    ] = None,
    broker_tls: Annotated[
        bool | None,
        typer.Option(
            "--broker-tls/--no-broker-tls",
            help="The panel connects with TLS (default: as the hub's broker URL says).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as JSON only.")] = (
        False
    ),
    qr: Annotated[bool, typer.Option(help="Print the settings as a QR code too.")] = True,
    config: ConfigOption = None,
    registry: RegistryOption = None,
) -> None:
    """New broker password and signing key for a panel; replaces the ones it had.

    They are shown only now. The broker takes them once its files are written again.
    """
    settings = _settings(config, registry)
    place = _registry(settings).panel_place(panel_id)
    if place is None:
        _fail(f"no panel {panel_id!r} in the registry {settings.registry}")
    now = SystemClock().now_ms()
    secrets = _with_credentials(
        settings,
        lambda store: store.provision(panel_id, now, require_signed=not no_signing),
        create=True,
    )
    found = device_settings(
        secrets, place, _panel_broker(settings, broker_host, broker_port, broker_tls)
    )
    if as_json:
        output.print(json.dumps(found, indent=2), markup=False)
        return
    _print_settings(found)
    if qr:
        # Topics and client id follow from the ids by protocol v1: left out, the code stays
        # small enough for a cheap camera.
        compact = {k: v for k, v in found.items() if k not in {"topics", "client_id"}}
        _print_qr(json.dumps(compact, separators=(",", ":")))
    _note(f"shown only this once. For the broker to take the new password, {RELOAD_HINT}.")


# --- list and revoke -----------------------------------------------------------------------


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@panels.command("list")
def list_panels(config: ConfigOption = None, registry: RegistryOption = None) -> None:
    """Provisioned panels: when, whether their events must be signed, whether they are known."""
    settings = _settings(config, registry)
    reg = _registry(settings) if settings.registry else None
    found = _with_credentials(settings, lambda store: store.all())
    if not found:
        output.print(
            "no panel is provisioned yet: provision one with `tenhub panel provision`", markup=False
        )
    else:
        rows = [("PANEL", "UNIT", "PROVISIONED", "SIGNING")]
        for c in found:
            place = reg.panel_place(c.panel_id) if reg else None
            unit = place.unit.id if place else ("not in registry" if reg else "-")
            signing = "required" if c.require_signed else "optional"
            rows.append((c.panel_id, unit, _when(c.provisioned_at), signing))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            output.print(line.rstrip(), markup=False)
    if reg is not None:
        provisioned = {c.panel_id for c in found}
        missing = [h.panel for u in reg.units for h in u.households if h.panel not in provisioned]
        if missing:
            _note(
                f"{len(missing)} panel(s) of the registry are not provisioned: "
                + ", ".join(missing[:10])
                + (", …" if len(missing) > 10 else "")
            )


@panels.command()
def revoke(
    panel_id: Annotated[str, typer.Argument(help="The panel whose credential to forget.")],
    config: ConfigOption = None,
) -> None:
    """Forget a panel's password and key; the broker refuses it once its files are rewritten."""
    settings = _settings(config, None)
    if not _with_credentials(settings, lambda store: store.revoke(panel_id)):
        _fail(f"panel {panel_id!r} has no credential")
    output.print(f"revoked {panel_id}", markup=False)
    _note(f"the broker still lets it in until you {RELOAD_HINT}.")


# --- broker-config -------------------------------------------------------------------------


def broker_config(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write the Mosquitto files into.")
    ],
    config: ConfigOption = None,
    registry: RegistryOption = None,
    listener_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port Mosquitto listens on.")
    ] = 1883,
    listener_host: Annotated[
        str | None, typer.Option(help="Address Mosquitto listens on (default: every one).")
    ] = None,
    broker_user: Annotated[
        str | None,
        typer.Option(help="User Mosquitto runs as (default: the one running this command)."),
    ] = None,
    hub_host: Annotated[
        str, typer.Option(help="Host by which the hub reaches the broker, for its URL.")
    ] = "localhost",
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Certificate (PEM, with its chain) for a TLS listener for panels."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="The certificate's private key (PEM, unencrypted).")
    ] = None,
    tls_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the TLS listener.")
    ] = 8883,
    tls_host: Annotated[
        str | None,
        typer.Option(help="Address the TLS listener listens on (default: every one)."),
    ] = None,
) -> None:
    """Write Mosquitto's password file, ACL and config for the registry's provisioned panels."""
    if (tls_cert is None) != (tls_key is None):
        _fail("a TLS listener needs both --tls-cert and --tls-key")
    tls = (
        TlsListener(tls_cert, tls_key, tls_port, tls_host)
        if tls_cert is not None and tls_key is not None
        else None
    )
    settings = _settings(config, registry)
    reg = _registry(settings)
    credentials = _with_credentials(settings, lambda store: store.all())
    try:
        password, new = hub_password(out)
        written = write_broker_config(
            out,
            reg,
            credentials,
            hub_password_hash=hash_mosquitto_password(password),
            listener_port=listener_port,
            listener_host=listener_host,
            broker_user=broker_user,
            tls=tls,
        )
    except BrokerConfigError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write into {out}: {exc.strerror or exc}")
    admitted = sum(reg.panel_place(c.panel_id) is not None for c in credentials)
    total = reg.counts()["panels"]
    for path in written:
        output.print(f"wrote {path}", markup=False)
    output.print(f"{admitted} of {total} registry panels can log in", markup=False)
    orphans = [c.panel_id for c in credentials if reg.panel_place(c.panel_id) is None]
    if orphans:
        _note(f"left out, not in the registry: {', '.join(orphans)}")
    if broker_user is None and os.geteuid() == 0:
        _note("Mosquitto will run as root: pass --broker-user mosquitto to drop privileges")
    login = f"{HUB_USERNAME}:{quote(password, safe='')}@{hub_host}"
    # A hub on another machine crosses the network too: over TLS, when there is a listener.
    remote_tls = tls is not None and not _is_loopback(hub_host)
    url = f"mqtts://{login}:{tls.port}" if tls and remote_tls else f"mqtt://{login}:{listener_port}"
    kept = "new" if new else "kept"
    output.print(
        f"hub password ({kept}) in {out / HUB_PASSWORD_FILE}; run the hub with", markup=False
    )
    output.print(f"  TENHUB_BROKER_URL={url}", markup=False)
    if remote_tls:
        output.print(
            "  TENHUB_BROKER_CA_FILE=<the CA's PEM file>   (unless a public CA signed it)",
            markup=False,
        )
    if tls is not None:
        output.print(
            f"panels connect with TLS on port {tls.port}, trusting the CA that signed"
            f" {tls.certfile}; provision them with",
            markup=False,
        )
        output.print(
            f"  tenhub panel provision <id> --broker-host <host> --broker-port {tls.port}"
            " --broker-tls",
            markup=False,
        )
        if listener_host is None:
            _note(
                f"the plain listener (port {listener_port}) still listens on every interface;"
                " --listener-host 127.0.0.1 keeps it to a hub on this machine"
            )
    conf = (out / CONF_FILE).resolve()
    output.print(f"start Mosquitto with: mosquitto -c {conf}", markup=False)
    output.print("after re-running, reload a running one: kill -HUP <mosquitto pid>", markup=False)
