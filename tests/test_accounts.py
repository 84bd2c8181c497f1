"""Accounts as a desk officer, an operator and an attacker meet them.

The web side runs over ASGI with the real AccountStore on a real database; the clock is
one the test moves. The `tenhub user` commands run as the operator types them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI
from typer.testing import CliRunner

from hub.accounts.account_store import AccountError, AccountStore, User
from hub.accounts.login_throttle_store import LoginThrottleStore
from hub.accounts.user_cli import users
from hub.clock import ManualClock
from hub.passwords import hash_password, verify_password
from hub.storage.db import Database
from hub.web import auth, services
from hub.web.auth import csrf_protect, current_user, install_auth, page_user, require_role
from tests.conftest import EXAMPLE_REGISTRY, db_url_of

PUBLIC_URL = "http://hub.test"
PASSWORD = "correct horse battery"


@dataclass
class FakeHub:
    """The parts of the hub's `WebServices` that the auth routes use."""

    accounts: AccountStore
    login_failures: LoginThrottleStore
    public_url: str = PUBLIC_URL
    clock: ManualClock = field(default_factory=ManualClock)


def build_app(hub: FakeHub) -> FastAPI:
    """The login routes, plus a few routes that use the dependencies as other routers will."""
    app = FastAPI()
    services.attach(app, hub)  # type: ignore[arg-type]  # only the parts auth uses
    install_auth(app)
    app.include_router(auth.router)

    @app.post("/api/poke", dependencies=[Depends(csrf_protect)])
    async def poke(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"poked_by": user.username}

    @app.get("/dashboard")
    async def dashboard(user: Annotated[User, Depends(page_user)]) -> dict[str, str]:
        return {"page_for": user.username}

    @app.get("/api/admin-only")
    async def admin_only(user: Annotated[User, Depends(require_role("admin"))]) -> dict[str, str]:
        return {"admin": user.username}

    return app


@pytest.fixture
async def hub(db_target: str):
    db = Database(db_target)
    await db.open()
    yield FakeHub(AccountStore(db), LoginThrottleStore(db))
    await db.close()


@pytest.fixture
def app(hub: FakeHub) -> FastAPI:
    return build_app(hub)


def browser(app: FastAPI, ip: str = "192.0.2.10", base_url: str = PUBLIC_URL) -> httpx.AsyncClient:
    """A browser at this address: keeps cookies, does not follow redirects."""
    transport = httpx.ASGITransport(app=app, client=(ip, 51000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


async def add_user(
    hub: FakeHub,
    username: str = "desk-a",
    role: str = "police",
    zones: tuple[str, ...] = ("z-a",),
    phone: str | None = "+15550009911",
) -> User:
    password_hash = await asyncio.to_thread(hash_password, PASSWORD)
    return await hub.accounts.add_user(
        username, password_hash, role, zones, phone, hub.clock.now_ms()
    )


async def log_in(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD, next_path: str = "/"
) -> httpx.Response:
    """Open the login form and send it, as a browser does."""
    form = await client.get("/login", params={"next": next_path})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert form.status_code == 200 and csrf
    return await client.post(
        "/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": csrf[1],
            "next": next_path,
        },
    )


def session_cookie_header(response: httpx.Response) -> str:
    headers = [
        h
        for h in response.headers.get_list("set-cookie")
        if h.startswith(f"{auth.SESSION_COOKIE}=")
    ]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return headers[0]


# --- logging in ----------------------------------------------------------------------------


async def test_a_desk_officer_logs_in_and_the_dashboard_knows_who_it_is(hub, app):
    await add_user(hub)
    async with browser(app) as client:
        form = await client.get("/login", params={"next": "/alarms?zone=z-a"})
        assert 'type="password"' in form.text
        assert auth.LOGIN_CSRF_COOKIE in form.cookies

        response = await log_in(client, "desk-a", next_path="/alarms?zone=z-a")
        assert response.status_code == 303
        assert response.headers["location"] == "/alarms?zone=z-a"
        cookie = session_cookie_header(response)
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "Max-Age=43200" in cookie and "Secure" not in cookie

        me = await client.get("/api/me")
        assert me.status_code == 200
        body = me.json()
        assert body["username"] == "desk-a" and body["role"] == "police"
        assert body["zones"] == ["z-a"] and body["phone"] == "+15550009911"
        assert len(body["csrf_token"]) >= 32


async def test_the_session_cookie_is_secure_behind_https(hub):
    hub.public_url = "https://hub.test"
    await add_user(hub)
    async with browser(build_app(hub), base_url="https://hub.test") as client:
        response = await log_in(client, "desk-a")
    assert response.status_code == 303
    assert "Secure" in session_cookie_header(response)


async def test_wrong_password_and_unknown_user_get_the_same_answer(hub, app):
    await add_user(hub)
    async with browser(app) as client:
        wrong = await log_in(client, "desk-a", "not the password")
        unknown = await log_in(client, "nobody", PASSWORD)
        assert (await client.get("/api/me")).status_code == 401
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert "wrong username or password" in response.text
        assert auth.SESSION_COOKIE not in response.cookies


async def test_a_login_form_posted_from_elsewhere_is_refused(hub, app):
    await add_user(hub)
    async with browser(app) as client:
        no_token = await client.post("/login", data={"username": "desk-a", "password": PASSWORD})
        assert no_token.status_code == 403 and "expired" in no_token.text
        await client.get("/login")
        other_site = await client.post(
            "/login",
            headers={"Origin": "https://evil.example"},
            data={
                "username": "desk-a",
                "password": PASSWORD,
                "csrf_token": client.cookies[auth.LOGIN_CSRF_COOKIE],
            },
        )
        assert other_site.status_code == 403
        assert (await client.get("/api/me")).status_code == 401


async def test_next_leads_only_to_pages_of_this_hub(hub, app):
    await add_user(hub)
    async with browser(app) as client:
        for evil in ("//evil.example", "https://evil.example/", "/\\evil.example", "alarms"):
            response = await log_in(client, "desk-a", next_path=evil)
            assert response.status_code == 303, evil
            assert response.headers["location"] == "/", evil
        form = await client.get("/login", params={"next": "//evil.example"})
        assert 'name="next" value="/"' in form.text


async def test_after_a_few_failures_the_address_waits_even_with_the_right_password(hub, app):
    await add_user(hub)
    async with browser(app, ip="198.51.100.7") as attacker:
        for _ in range(auth.ACCOUNT_FREE_FAILURES + 1):
            assert (await log_in(attacker, "desk-a", "guess-guess-guess")).status_code == 401
        held = await log_in(attacker, "desk-a", PASSWORD)
        assert held.status_code == 429 and held.headers["retry-after"] == "1"
        assert "too many attempts; try again in 1 second" in held.text
        assert auth.SESSION_COOKIE not in held.cookies
        hub.clock.advance(1)
        assert (await log_in(attacker, "desk-a", "guess-guess-guess")).status_code == 401
        assert "try again in 2 seconds" in (await log_in(attacker, "desk-a", PASSWORD)).text
        hub.clock.advance(2)
        assert (await log_in(attacker, "desk-a", PASSWORD)).status_code == 303
    # The owner at its own address was never held up.
    async with browser(app, ip="192.0.2.10") as officer:
        assert (await log_in(officer, "desk-a")).status_code == 303


async def test_one_address_trying_many_usernames_is_stopped(hub, app):
    await add_user(hub)
    async with browser(app, ip="198.51.100.7") as attacker:
        for n in range(auth.ADDRESS_FREE_FAILURES + 1):
            assert (await log_in(attacker, f"name-{n}", "guess-guess-guess")).status_code == 401
        assert (await log_in(attacker, "desk-a")).status_code == 429
    async with browser(app, ip="192.0.2.10") as officer:
        assert (await log_in(officer, "desk-a")).status_code == 303


async def test_a_login_elsewhere_does_not_give_an_attacker_fresh_attempts(hub, app):
    await add_user(hub)
    async with browser(app, ip="198.51.100.7") as attacker, browser(app) as officer:
        for _ in range(auth.ACCOUNT_FREE_FAILURES):
            assert (await log_in(attacker, "desk-a", "guess-guess-guess")).status_code == 401
        assert (await log_in(officer, "desk-a")).status_code == 303
        assert (await log_in(attacker, "desk-a", "guess-guess-guess")).status_code == 401
        assert (await log_in(attacker, "desk-a", PASSWORD)).status_code == 429


# --- using the session -----------------------------------------------------------------------


async def test_a_state_change_from_the_session_needs_its_csrf_token(hub, app):
    await add_user(hub)
    async with browser(app) as client:
        await log_in(client, "desk-a")
        csrf = (await client.get("/api/me")).json()["csrf_token"]

        missing = await client.post("/api/poke")
        assert missing.status_code == 403
        assert missing.json() == {"detail": "CSRF token missing or wrong"}
        wrong = await client.post("/api/poke", headers={"X-CSRF-Token": "x" * len(csrf)})
        assert wrong.status_code == 403

        by_header = await client.post("/api/poke", headers={"X-CSRF-Token": csrf})
        assert by_header.status_code == 200 and by_header.json() == {"poked_by": "desk-a"}
        by_form = await client.post("/api/poke", data={"csrf_token": csrf})
        assert by_form.status_code == 200

        same_site = await client.post(
            "/api/poke", headers={"X-CSRF-Token": csrf, "Origin": PUBLIC_URL}
        )
        assert same_site.status_code == 200
        cross_site = await client.post(
            "/api/poke", headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        )
        assert cross_site.status_code == 403


async def test_without_a_login_the_api_says_401_and_pages_lead_to_the_login(app):
    async with browser(app) as client:
        me = await client.get("/api/me")
        assert me.status_code == 401 and me.json() == {"detail": "log in first"}
        assert (await client.post("/api/poke")).status_code == 401
        page = await client.get("/dashboard", params={"zone": "z-a"})
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/dashboard%3Fzone%3Dz-a"
        client.cookies.set(auth.SESSION_COOKIE, "made-up")
        assert (await client.get("/api/me")).status_code == 401


async def test_pages_and_roles_follow_the_logged_in_user(hub, app):
    await add_user(hub)
    await add_user(hub, "chief", role="admin", zones=(), phone=None)
    async with browser(app) as desk, browser(app) as chief:
        await log_in(desk, "desk-a")
        await log_in(chief, "chief")
        assert (await desk.get("/dashboard")).json() == {"page_for": "desk-a"}
        refused = await desk.get("/api/admin-only")
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
        assert (await chief.get("/api/admin-only")).json() == {"admin": "chief"}


async def test_logging_in_again_replaces_the_session_the_browser_had(hub, app):
    await add_user(hub)
    async with browser(app) as client:
        await log_in(client, "desk-a")
        first = client.cookies[auth.SESSION_COOKIE]
        await log_in(client, "desk-a")
        assert client.cookies[auth.SESSION_COOKIE] != first
        assert await hub.accounts.session_user(first, hub.clock.now_ms()) is None
        assert (await client.get("/api/me")).status_code == 200


async def test_a_session_lasts_twelve_hours(hub, app):
    await add_user(hub)
    async with browser(app) as client:
        await log_in(client, "desk-a")
        hub.clock.advance(12 * 3600 - 1)
        assert (await client.get("/api/me")).status_code == 200
        hub.clock.advance(1)
        assert (await client.get("/api/me")).status_code == 401


async def test_a_disabled_users_session_and_tokens_stop_working(hub, app):
    user = await add_user(hub)
    token = await hub.accounts.new_api_token(user.id, "cad-link", hub.clock.now_ms())
    async with browser(app) as client:
        await log_in(client, "desk-a")
        assert (await client.get("/api/me")).status_code == 200
        await hub.accounts.set_disabled("desk-a", True)
        assert (await client.get("/api/me")).status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/api/me", headers=bearer)).status_code == 401
        again = await log_in(client, "desk-a")
        assert again.status_code == 401 and "wrong username or password" in again.text


async def test_logging_out_ends_the_session(hub, app):
    await add_user(hub)
    async with browser(app) as client:
        await log_in(client, "desk-a")
        old_cookie = client.cookies[auth.SESSION_COOKIE]
        csrf = (await client.get("/api/me")).json()["csrf_token"]
        assert (await client.post("/logout")).status_code == 403  # a forged logout: refused
        response = await client.post("/logout", headers={"X-CSRF-Token": csrf})
        assert response.status_code == 303 and response.headers["location"] == "/login"
        assert auth.SESSION_COOKIE not in client.cookies
        assert (await client.get("/api/me")).status_code == 401
    async with browser(app) as replay:
        replay.cookies.set(auth.SESSION_COOKIE, old_cookie)
        assert (await replay.get("/api/me")).status_code == 401


# --- API tokens ----------------------------------------------------------------------------


async def test_an_api_token_needs_no_csrf_token_until_it_is_revoked(hub, app):
    user = await add_user(hub)
    token = await hub.accounts.new_api_token(user.id, "cad-link", hub.clock.now_ms())
    assert token.startswith("thk_")
    bearer = {"Authorization": f"Bearer {token}"}
    async with browser(app) as client:
        me = await client.get("/api/me", headers=bearer)
        assert me.status_code == 200 and me.json()["username"] == "desk-a"
        assert "csrf_token" not in me.json()
        poke = await client.post("/api/poke", headers=bearer)
        assert poke.status_code == 200

        [listed] = await hub.accounts.list_api_tokens(user.id)
        assert listed.name == "cad-link" and listed.last_used_at == hub.clock.now_ms()
        assert await hub.accounts.revoke_api_token(listed.id)
        assert (await client.get("/api/me", headers=bearer)).status_code == 401
        made_up = {"Authorization": "Bearer thk_made-up"}
        assert (await client.post("/api/poke", headers=made_up)).status_code == 401


async def test_only_hashes_of_session_and_api_tokens_are_stored(hub, app):
    user = await add_user(hub)
    api_token = await hub.accounts.new_api_token(user.id, "cad-link", hub.clock.now_ms())
    async with browser(app) as client:
        await log_in(client, "desk-a")
        session = client.cookies[auth.SESSION_COOKIE]

    def stored(conn) -> list[str]:
        hashes = conn.execute(
            sa.text("SELECT token_hash FROM sessions UNION ALL SELECT token_hash FROM api_tokens")
        ).scalars()
        # Every value of every table, as a copy of the database would hold them.
        dump = "\n".join(
            repr(tuple(row))
            for table in sa.inspect(conn).get_table_names()
            for row in conn.execute(sa.text(f"SELECT * FROM {table}"))
        )
        assert session not in dump and api_token not in dump
        return sorted(hashes)

    expected = sorted(hashlib.sha256(t.encode()).hexdigest() for t in (session, api_token))
    assert await hub.accounts.db.read(stored) == expected


# --- the store and the passwords -------------------------------------------------------------


async def test_usernames_are_unique_regardless_of_case(hub):
    await add_user(hub)
    with pytest.raises(AccountError, match="already exists"):
        await add_user(hub, "Desk-A")
    found = await hub.accounts.find_user("DESK-A")
    assert found is not None and found[0].username == "desk-a"
    assert await hub.accounts.count_users() == 1


async def test_roles_see_their_zones(hub):
    desk = await add_user(hub, "desk-ab", zones=("z-a", "z-b"))
    patrol = await add_user(hub, "team-a", role="patrol", zones=("z-a",))
    chief = await add_user(hub, "chief", role="admin", zones=(), phone=None)
    assert desk.sees_zone("z-b") and not desk.sees_zone("z-c")
    assert patrol.sees_zone("z-a") and not patrol.sees_zone("z-b")
    assert chief.is_admin and chief.sees_zone("z-anything")
    with pytest.raises(AccountError, match="at least one zone"):
        await add_user(hub, "desk-x", zones=())


def test_passwords_are_salted_scrypt_and_short_ones_are_refused():
    encoded = hash_password(PASSWORD)
    assert encoded.startswith("scrypt$32768$8$1$")
    assert encoded != hash_password(PASSWORD)
    assert verify_password(PASSWORD, encoded)
    assert not verify_password(PASSWORD + "!", encoded)
    for malformed in ("", "scrypt$x", "bcrypt$1$2$3$4$5", encoded.replace("$8$", "$0$")):
        assert not verify_password(PASSWORD, malformed)
    with pytest.raises(ValueError, match="at least 10 characters"):
        hash_password("short")


# --- tenhub user -----------------------------------------------------------------------------


def db_env(target: str) -> dict[str, str]:
    """The environment that points `tenhub` at this database (a file or a URL)."""
    url = db_url_of(target)
    return {"TENHUB_DB_URL": url} if url else {"TENHUB_DB_PATH": target}


def run_user_cli(target: str, *args: str, stdin: str = "") -> object:
    env = {**db_env(target), "TENHUB_REGISTRY": ""}
    return CliRunner().invoke(users, list(args), input=stdin, env=env)


def test_an_operator_adds_and_lists_users(db_target):
    added = run_user_cli(
        db_target,
        "add",
        "desk-a",
        "--role",
        "police",
        "--zone",
        "z-a",
        "--zone",
        "z-b",
        "--phone",
        "+15550009911",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.exit_code == 0, added.output
    assert "added police desk-a in z-a, z-b" in added.stdout
    chief = run_user_cli(
        db_target, "add", "chief", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert chief.exit_code == 0, chief.output

    listed = run_user_cli(db_target, "list")
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["USERNAME", "ROLE", "ZONES", "PHONE", "STATUS"]
    assert lines[1].split() == ["chief", "admin", "*", "-", "active"]
    assert lines[2].split() == ["desk-a", "police", "z-a,z-b", "+15550009911", "active"]

    assert run_user_cli(db_target, "disable", "desk-a").exit_code == 0
    assert "disabled" in run_user_cli(db_target, "list").stdout.splitlines()[2]
    assert run_user_cli(db_target, "enable", "desk-a").exit_code == 0

    async def check() -> None:
        db = Database(db_target)
        await db.open()
        try:
            found = await AccountStore(db).find_user("desk-a")
        finally:
            await db.close()
        assert found is not None and verify_password(PASSWORD, found[1])

    asyncio.run(check())


def test_the_operator_is_told_what_is_wrong(db_target, tmp_path):
    def refused(*args: str, stdin: str = PASSWORD + "\n", target: str = db_target) -> str:
        result = run_user_cli(target, *args, stdin=stdin)
        assert result.exit_code == 1, result.output
        return result.stderr

    assert "at least one zone" in refused("add", "desk-a", "--role", "police", "--password-stdin")
    assert "exactly one zone" in refused("add", "team", "--role", "patrol", "--password-stdin")
    assert "at least 10 characters" in refused(
        "add", "chief", "--role", "admin", "--password-stdin", stdin="short\n"
    )
    assert "not an E.164" in refused(
        "add", "chief", "--role", "admin", "--phone", "5550009911", "--password-stdin"
    )
    unknown_zone = refused(
        "add",
        "desk-a",
        "--role",
        "police",
        "--zone",
        "z-nowhere",
        "--registry",
        str(EXAMPLE_REGISTRY),
        "--password-stdin",
    )
    assert "unknown zone 'z-nowhere'" in unknown_zone
    assert "no database" in refused("list", target=str(tmp_path / "nowhere.db"))

    assert (
        run_user_cli(
            db_target, "add", "chief", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n"
        ).exit_code
        == 0
    )
    assert "already exists" in refused("add", "CHIEF", "--role", "admin", "--password-stdin")
    assert "no user 'nobody'" in refused("disable", "nobody")
    assert "no user 'nobody'" in refused("passwd", "nobody", "--password-stdin")


def test_zones_are_checked_against_the_registry(db_target, registry):
    zone = registry.units[0].zone
    result = run_user_cli(
        db_target,
        "add",
        "desk-a",
        "--role",
        "police",
        "--zone",
        zone,
        "--registry",
        str(EXAMPLE_REGISTRY),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output


def test_an_api_token_is_shown_once_and_a_new_password_ends_sessions(db_target):
    run_user_cli(
        db_target, "add", "chief", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    made = run_user_cli(db_target, "token", "chief", "--name", "cad-link")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert re.fullmatch(r"thk_[A-Za-z0-9_-]{40,}", token)
    assert "not shown again" in made.stderr

    async def open_session() -> str:
        db = Database(db_target)
        await db.open()
        try:
            accounts = AccountStore(db)
            user = await accounts.token_user(token, 1)
            assert user is not None and user.username == "chief"
            session, _ = await accounts.new_session(user.id, 1, auth.SESSION_TTL_MS)
            return session
        finally:
            await db.close()

    async def session_alive(session: str) -> bool:
        db = Database(db_target)
        await db.open()
        try:
            return await AccountStore(db).session_user(session, 2) is not None
        finally:
            await db.close()

    session = asyncio.run(open_session())
    changed = run_user_cli(
        db_target, "passwd", "chief", "--password-stdin", stdin="another long password\n"
    )
    assert changed.exit_code == 0, changed.output
    assert not asyncio.run(session_alive(session))


def _user_command_mounted() -> bool:
    from hub.cli import app

    return any(group.name == "user" for group in app.registered_groups)


def tenhub(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`tenhub …` as a process, with only the environment given here."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env={**clean, **env},
        timeout=60,
    )


@pytest.mark.skipif(not _user_command_mounted(), reason="`tenhub user` is not mounted yet")
def test_tenhub_user_as_a_process(db_target):
    env = db_env(db_target)
    added = tenhub(
        env,
        "user",
        "add",
        "desk-a",
        "--role",
        "police",
        "--zone",
        "z-a",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    listed = tenhub(env, "user", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:3] == ["desk-a", "police", "z-a"]
