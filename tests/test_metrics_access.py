"""Who may read /metrics: this machine, or a scraper with the metrics token; nobody else.

A real hub serving HTTP on every address of the machine. A request to its loopback
address comes from 127.0.0.1; one to the machine's own network address comes from that
address, which is not loopback: the hub sees a remote client, as it would a scraper on
another host. Without such an address the remote client is an ASGI client address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from hub.app import Hub
from hub.settings import Settings

pytestmark = pytest.mark.asyncio

TOKEN = "scrape-4f1c9a0e7b2d8c6a5e3f"
REMOTE_CLIENT = ("203.0.113.7", 40123)  # documentation range: never this machine


def network_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # picks the route's source; sends nothing
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


async def start_hub(mosquitto, tmp_path, registry, **settings) -> tuple[Hub, asyncio.Task]:
    hub = Hub(
        Settings(
            broker_url=mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
            db_path=str(tmp_path / "hub.db"),
            http_addr="0.0.0.0:0",  # loopback and the machine's network address
            hub_client_id="tenhub-metrics-test",
            **settings,
        ),
        registry,
    )
    task = asyncio.create_task(hub.run())
    async with asyncio.timeout(10):
        await hub.started.wait()
    return hub, task


@pytest.fixture
async def serve(mosquitto, tmp_path, registry) -> AsyncIterator[Callable]:
    """`await serve(**settings)`: a running hub with these settings, stopped after."""
    running: list[tuple[Hub, asyncio.Task]] = []

    async def start(**settings) -> Hub:
        running.append(await start_hub(mosquitto, tmp_path, registry, **settings))
        return running[-1][0]

    yield start
    for hub, task in running:
        hub.stop()
        async with asyncio.timeout(15):
            await task


def local_client(hub: Hub) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{hub.http_port}")


def remote_client(hub: Hub) -> httpx.AsyncClient:
    """A client the hub sees at a non-loopback address: over TCP when the machine has one."""
    address = network_address()
    if address is not None:
        return httpx.AsyncClient(base_url=f"http://{address}:{hub.http_port}")
    transport = httpx.ASGITransport(app=hub.web, client=REMOTE_CLIENT)
    return httpx.AsyncClient(transport=transport, base_url="http://hub.invalid")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_only_this_machine_reads_the_metrics_without_a_token(serve):
    hub = await serve()
    async with local_client(hub) as local, remote_client(hub) as remote:
        mine = await local.get("/metrics")
        theirs = await remote.get("/metrics")
        guessed = await remote.get("/metrics", headers=bearer(TOKEN))
        health = await remote.get("/healthz")
        # A proxy on this machine not configured as one: its peer address is loopback,
        # but the request is someone else's.
        relayed = await local.get("/metrics", headers={"X-Forwarded-For": "198.51.100.23"})

    assert mine.status_code == 200 and "tenhub_events_total" in mine.text
    assert theirs.status_code == 403 and "tenhub_" not in theirs.text
    assert guessed.status_code == 403, "no token is configured: none opens it"
    assert health.status_code == 200, "/healthz stays open to load balancers"
    assert relayed.status_code == 403


async def test_with_a_token_configured_a_scraper_elsewhere_needs_it(serve):
    hub = await serve(metrics_token=TOKEN)
    async with local_client(hub) as local, remote_client(hub) as remote:
        right = await remote.get("/metrics", headers=bearer(TOKEN))
        lower_case = await remote.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
        wrong = await remote.get("/metrics", headers=bearer(TOKEN[:-1] + "0"))
        prefix = await remote.get("/metrics", headers=bearer(TOKEN[:8]))
        basic = await remote.get("/metrics", auth=("prometheus", TOKEN))
        none = await remote.get("/metrics")
        mine = await local.get("/metrics")

    assert right.status_code == lower_case.status_code == 200
    assert "tenhub_events_total" in right.text
    for refused in (wrong, prefix, basic, none):
        assert refused.status_code == 401, refused.request.headers
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "tenhub_" not in refused.text
    assert mine.status_code == 200, "this machine still reads it without the token"


async def test_a_too_short_token_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(metrics_token="hunter2")
