"""Logging in while someone guesses passwords: the guesser's address waits, not the owner.

A real hub answers over real HTTP. Clients connect from different loopback addresses
(127.0.0.x) as from different machines, and hub time is a clock the test moves, so a
wait of minutes is waited out at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import httpx
import pytest

from hub.clock import ManualClock
from hub.passwords import hash_password
from hub.problems import ConfigError
from hub.settings import load_settings
from hub.web import auth
from tests.conftest import HubRunner, db_url_of
from tests.waiting import until

# The policy as a user meets it: waits double from one second up to 15 minutes, and one
# address has 20 failures on any accounts before it waits.
MAX_WAIT_S = 15 * 60
ADDRESS_FREE_FAILURES = 20
PASSWORD = "desk-password-0bc0a4"
GUESS = "guess-guess-guess"
ATTACKER = "127.0.0.2"
OFFICER = "127.0.0.3"
# uvicorn on its own trusts X-Forwarded-For from here: a local process, or a proxy that
# passes on whatever header its client sent.
LOCAL = "127.0.0.1"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def runner(embedded_broker, tmp_path, registry, clock, db_target):
    """Hubs on one database; panels are not the subject, so none is due to go offline."""
    url = embedded_broker.url.replace("mqtt://", "mqtt://tenhub-test-hub@")
    runner = HubRunner(
        url,
        tmp_path / "tenhub.db",
        registry,
        db_url=db_url_of(db_target),
        offline_after_s=30 * 86400,
    )
    runner.clock = clock
    yield runner
    await runner.stop()


async def start_hub(runner: HubRunner, **settings):
    """Start a hub with the police desk's and the patrol's accounts (made once)."""
    hub = await runner.start(**settings)
    if not await hub.accounts.count_users():
        password_hash = await asyncio.to_thread(hash_password, PASSWORD)
        now = hub.clock.now_ms()
        await hub.accounts.add_user("desk", password_hash, "police", ("z-qiaokou",), None, now)
        await hub.accounts.add_user("patrol", password_hash, "patrol", ("z-qiaokou",), None, now)
    return hub


def client_at(hub, address: str) -> httpx.AsyncClient:
    """A browser on the machine with this address."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, base_url=hub.public_url, timeout=10)


async def log_in(
    client: httpx.AsyncClient, username: str, password: str, forwarded_for: str | None = None
) -> httpx.Response:
    """Open the login form and send it, as a browser does (through a proxy if forwarded)."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    form = await client.get("/login", headers=headers)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert form.status_code == 200 and csrf
    data = {"username": username, "password": password, "csrf_token": csrf[1]}
    return await client.post("/login", data=data, headers=headers)


def retry_after(response: httpx.Response) -> int:
    """The seconds a throttled login is told to wait, checked against the page's words."""
    assert response.status_code == 429, response.text
    seconds = int(response.headers["retry-after"])
    words = re.search(r"too many attempts; try again in (\d+) (second|minute)s?", response.text)
    assert words, response.text
    shown = int(words[1]) * (60 if words[2] == "minute" else 1)
    assert shown >= seconds > shown - (60 if words[2] == "minute" else 1)
    return seconds


async def guess(
    client: httpx.AsyncClient, clock: ManualClock, wrong: int, forwarded_for: str | None = None
) -> list[int]:
    """Send `wrong` wrong passwords for the desk, waiting out each refusal; the waits asked."""
    waits: list[int] = []
    while wrong:
        response = await log_in(client, "desk", GUESS, forwarded_for)
        if response.status_code == 429:
            waits.append(retry_after(response))
            clock.advance(waits[-1])
        else:
            assert response.status_code == 401, response.text
            wrong -= 1
    return waits


async def test_fifty_wrong_passwords_from_one_address_slow_it_and_not_the_desk_officer(
    runner, clock
):
    hub = await start_hub(runner)
    async with client_at(hub, ATTACKER) as attacker, client_at(hub, OFFICER) as officer:
        waits = await guess(attacker, clock, 50)

        # The attacker keeps hammering, four browsers at once, while the desk officer
        # logs in from the station.
        refused = 0

        async def hammer() -> None:
            nonlocal refused
            async with client_at(hub, ATTACKER) as browser:
                while True:
                    if (await log_in(browser, "desk", GUESS)).status_code == 429:
                        refused += 1

        flood = [asyncio.create_task(hammer()) for _ in range(4)]
        try:
            await until(lambda: refused >= 8)
            started, refused_before = time.monotonic(), refused
            response = await log_in(officer, "desk", PASSWORD)
            took = time.monotonic() - started
            refused_meanwhile = refused - refused_before
        finally:
            for task in flood:
                task.cancel()
            for task in flood:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert response.status_code == 303, response.text
        assert auth.SESSION_COOKIE in response.cookies
        assert took < 2.0
        print(
            f"\ndesk officer logged in in {took * 1000:.0f} ms during the attack"
            f" ({refused_meanwhile} of the attacker's tries refused meanwhile);"
            f" waits asked of the attacker, in seconds: {waits}"
        )
        assert (await officer.get("/api/me")).json()["username"] == "desk"

        # The attacker was slowed: the waits double from one second, up to the cap.
        assert waits[:6] == [1, 2, 4, 8, 16, 32]
        assert waits == sorted(waits) and waits[-1] == MAX_WAIT_S
        # The officer's login hands the attacker nothing: even the right password waits.
        assert retry_after(await log_in(attacker, "desk", PASSWORD)) == MAX_WAIT_S


async def test_the_guesser_is_still_slowed_right_after_the_hub_restarts(runner, clock):
    hub = await start_hub(runner)
    async with client_at(hub, ATTACKER) as attacker:
        await guess(attacker, clock, 8)
        while (response := await log_in(attacker, "desk", GUESS)).status_code == 401:
            pass
        before = retry_after(response)

    await runner.stop()
    hub = await start_hub(runner)
    async with client_at(hub, ATTACKER) as attacker, client_at(hub, OFFICER) as officer:
        assert retry_after(await log_in(attacker, "desk", PASSWORD)) == before == 16
        assert (await log_in(officer, "desk", PASSWORD)).status_code == 303
        # Slowed, not locked out: once the wait is over the next try is heard.
        clock.advance(before)
        assert (await log_in(attacker, "desk", GUESS)).status_code == 401
        assert retry_after(await log_in(attacker, "desk", PASSWORD)) == 2 * before


async def test_x_forwarded_for_from_a_client_that_is_no_named_proxy_is_ignored(runner, clock):
    hub = await start_hub(runner)  # no proxy named
    async with client_at(hub, LOCAL) as attacker:
        # Many account names, each from an address the header makes up.
        for n in range(ADDRESS_FREE_FAILURES + 1):
            response = await log_in(attacker, f"name-{n}", GUESS, f"198.51.100.{n + 1}")
            assert response.status_code == 401, response.text
        # Yet another made-up address does not escape: the client is its connection's peer.
        assert retry_after(await log_in(attacker, "desk", PASSWORD, "203.0.113.9")) == 1
        assert retry_after(await log_in(attacker, "patrol", PASSWORD)) == 1
    async with client_at(hub, OFFICER) as officer:
        assert (await log_in(officer, "desk", PASSWORD, "127.0.0.1")).status_code == 303


async def test_behind_a_named_proxy_the_forwarded_client_is_the_one_slowed(runner, clock):
    hub = await start_hub(runner, forwarded_allow_ips=(LOCAL,))
    attacker_at, officer_at = "198.51.100.7", "192.0.2.10"
    async with client_at(hub, LOCAL) as proxy:
        waits = await guess(proxy, clock, 6, forwarded_for=attacker_at)
        assert waits == [1, 2]
        assert retry_after(await log_in(proxy, "desk", PASSWORD, attacker_at)) == 4
        # The same proxy forwards the officer: another client, at once.
        response = await log_in(proxy, "desk", PASSWORD, officer_at)
        assert response.status_code == 303, response.text
    # A client that is not the named proxy cannot claim someone else's address.
    async with client_at(hub, ATTACKER) as stranger:
        await guess(stranger, clock, 4)
        assert retry_after(await log_in(stranger, "desk", PASSWORD, officer_at)) == 1


def test_the_operator_names_the_proxies_and_a_typo_is_refused():
    env = {"TENHUB_FORWARDED_ALLOW_IPS": "10.0.0.5, 10.1.0.0/16,::1"}
    assert load_settings(env=env).forwarded_allow_ips == ("10.0.0.5", "10.1.0.0/16", "::1")
    assert load_settings(env={}).forwarded_allow_ips == ()
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"TENHUB_FORWARDED_ALLOW_IPS": "10.0.0.5,proxy.lan"})
    assert "'proxy.lan' is not an IP address or network" in str(refused.value)
