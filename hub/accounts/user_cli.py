"""`tenhub user …`: add, list, disable and enable dashboard accounts; passwords and API tokens.

Exit codes: 0 done, 1 the request cannot be done (unknown user, bad zone, short password),
2 the settings or the registry cannot be used.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from hub.accounts.account_store import AccountError, AccountStore, User, check_new_user
from hub.clock import SystemClock
from hub.passwords import hash_password
from hub.problems import ConfigError
from hub.registry.model import Registry, load_registry
from hub.settings import Settings, load_settings
from hub.storage.db import Database, display_target
from hub.storage.migrations import SchemaTooNew

users = typer.Typer(help="Accounts of the web dashboard.", no_args_is_help=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

T = TypeVar("T")


class Role(StrEnum):
    admin = "admin"
    police = "police"
    patrol = "patrol"


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file; every key can also be set by env."),
]
PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"tenhub user: {message}", style="red", markup=False)
    raise typer.Exit(code)


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem.format(), style="red", markup=False)
        raise typer.Exit(2) from None


def _with_accounts(
    settings: Settings, work: Callable[[AccountStore], Awaitable[T]], *, create: bool = False
) -> T:
    """Run work on the accounts of the configured database; AccountError → exit 1."""
    if not create and not settings.db_url and not Path(settings.db_path).exists():
        _fail(f"no database at {settings.db_path}: check --config or TENHUB_DB_PATH")

    async def main() -> T:
        db = Database(settings.database())
        await db.open()
        try:
            return await work(AccountStore(db))
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except AccountError as exc:
        _fail(str(exc))
    except SchemaTooNew as exc:
        _fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"cannot use the database {display_target(settings.database())}: {exc}")


def _new_password_hash(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        return hash_password(password)
    except ValueError as exc:
        _fail(str(exc))


def _known_zones(registry: Registry) -> set[str]:
    return (
        {unit.zone for unit in registry.units}
        | {patrol.zone for patrol in registry.patrols}
        | {zone for desk in registry.police_desks for zone in desk.zones}
    )


def _check_against_registry(settings: Settings, zones: tuple[str, ...], phone: str | None) -> None:
    """Refuse zones the registry does not know; warn about a phone no responder has."""
    if settings.registry is None:
        if zones:
            err.print(
                "note: zones not checked: no registry given (--registry or TENHUB_REGISTRY)",
                style="yellow",
                markup=False,
            )
        return
    try:
        registry = load_registry(settings.registry)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem.format(), style="red", markup=False)
        raise typer.Exit(2) from None
    known = _known_zones(registry)
    for zone in zones:
        if zone not in known:
            _fail(f"unknown zone {zone!r}: the registry has {', '.join(sorted(known)) or 'none'}")
    if phone is not None and not registry.who_has_phone(phone):
        err.print(
            f"note: no responder in the registry has phone {phone}: this user's browser"
            " gets no alarm pushes until one does",
            style="yellow",
            markup=False,
        )


@users.command()
def add(
    username: Annotated[str, typer.Argument(help="Login name, unique regardless of case.")],
    role: Annotated[Role, typer.Option("--role", help="admin, police or patrol.")],
    zone: Annotated[
        list[str] | None,
        typer.Option("--zone", "-z", help="A zone it sees (repeat for a desk's zones)."),
    ] = None,
    phone: Annotated[
        str | None,
        typer.Option(help="E.164 phone of the responder it is, like +15550009001."),
    ] = None,
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
    registry: Annotated[
        Path | None, typer.Option("--registry", "-r", help="Registry YAML (TENHUB_REGISTRY).")
    ] = None,
) -> None:
    """Add a user; police needs its desk's zones, patrol its one zone, admin none."""
    zones = tuple(dict.fromkeys(zone or ()))
    settings = _settings(config, registry=str(registry) if registry else None)
    try:
        check_new_user(username, role.value, zones, phone)
    except AccountError as exc:
        _fail(str(exc))
    _check_against_registry(settings, zones, phone)
    password_hash = _new_password_hash(password_stdin)
    now = SystemClock().now_ms()
    user = _with_accounts(
        settings,
        lambda accounts: accounts.add_user(username, password_hash, role.value, zones, phone, now),
        create=True,
    )
    out.print(f"added {_describe(user)}", markup=False)


@users.command("list")
def list_users(config: ConfigOption = None) -> None:
    """Every user: role, zones, phone, and whether it is disabled."""
    found = _with_accounts(_settings(config), lambda accounts: accounts.list_users())
    if not found:
        out.print("no users yet: add one with `tenhub user add`", markup=False)
        return
    rows = [("USERNAME", "ROLE", "ZONES", "PHONE", "STATUS")] + [
        (
            u.username,
            u.role,
            ",".join(u.zones) or ("*" if u.is_admin else "-"),
            u.phone or "-",
            "disabled" if u.disabled else "active",
        )
        for u in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(),
            markup=False,
        )


@users.command()
def disable(username: str, config: ConfigOption = None) -> None:
    """Disable a user: its sessions end and its API tokens stop working."""
    _with_accounts(_settings(config), lambda accounts: accounts.set_disabled(username, True))
    out.print(f"disabled {username}", markup=False)


@users.command()
def enable(username: str, config: ConfigOption = None) -> None:
    """Enable a disabled user again."""
    _with_accounts(_settings(config), lambda accounts: accounts.set_disabled(username, False))
    out.print(f"enabled {username}", markup=False)


@users.command()
def passwd(
    username: str, password_stdin: PasswordStdin = False, config: ConfigOption = None
) -> None:
    """Set a user's password; its sessions end."""
    settings = _settings(config)
    password_hash = _new_password_hash(password_stdin)
    _with_accounts(settings, lambda accounts: accounts.set_password(username, password_hash))
    out.print(f"password of {username} changed; its sessions are ended", markup=False)


@users.command()
def token(
    username: str,
    name: Annotated[str, typer.Option("--name", help="What the token is for, like `cad-link`.")],
    config: ConfigOption = None,
) -> None:
    """Make an API token for the user and print it; it is shown only this once."""
    if not name.strip():
        _fail("give the token a --name that says what it is for")

    async def make(accounts: AccountStore) -> str:
        found = await accounts.find_user(username)
        if found is None:
            raise AccountError(f"no user {username!r}")
        if found[0].disabled:
            raise AccountError(f"user {username!r} is disabled: enable it first")
        return await accounts.new_api_token(found[0].id, name.strip(), SystemClock().now_ms())

    new_token = _with_accounts(_settings(config), make)
    err.print(f"API token {name.strip()!r} for {username}; it is not shown again:", markup=False)
    out.print(new_token, markup=False)


def _describe(user: User) -> str:
    zones = f" in {', '.join(user.zones)}" if user.zones else ""
    phone = f", phone {user.phone}" if user.phone else ""
    return f"{user.role} {user.username}{zones}{phone}"
