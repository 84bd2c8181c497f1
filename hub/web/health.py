"""/healthz for load balancers and people, /metrics for Prometheus.

/metrics says how busy the hub is, how many panels are online and how alarms flow: it
is answered only to this machine (a loopback client) or to a scraper presenting the
`metrics_token` as a bearer token.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from hub.metrics import CONTENT_TYPE_LATEST
from hub.web.contract import PLAIN_TEXT
from hub.web.services import (
    BrokerDep,
    ChannelsDep,
    DatabaseDep,
    JobsDep,
    MetricsDep,
    PresenceDep,
    SettingsDep,
)

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    summary="Is the hub connected and able to store alarms?",
    responses={
        503: {
            "description": "Degraded: the body says what is down",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def healthz(
    db: DatabaseDep,
    broker: BrokerDep,
    presence: PresenceDep,
    channels: ChannelsDep,
    jobs: JobsDep,
) -> JSONResponse:
    """200 when the broker is connected and the database answers; 503 otherwise, saying which."""
    db_ok = True
    db_error = None
    try:
        await db.read(lambda conn: conn.execute(text("SELECT 1")).scalar_one())
    except Exception as exc:
        db_ok, db_error = False, str(exc)
    connected = broker.connected()
    body: dict[str, Any] = {
        "status": "ok" if connected and db_ok else "degraded",
        "broker": {"connected": connected, "url": broker.url},
        "database": {
            "ok": db_ok,
            "kind": db.dialect,  # sqlite or postgresql
            "schema_version": db.schema_version,
        },
        "panels_online": presence.online_count(),
        "channels": sorted(channels),
        "jobs": {runner.job.name: {"runs": runner.runs} for runner in jobs},
    }
    if db_error:
        body["database"]["error"] = db_error
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (loopback clients, or with the metrics token)",
    response_class=PlainTextResponse,
    responses={
        401: {"description": "A client elsewhere without the metrics token", "content": PLAIN_TEXT},
        403: {"description": "A client elsewhere, and no token is set", "content": PLAIN_TEXT},
    },
)
async def metrics(request: Request, settings: SettingsDep, hub_metrics: MetricsDep) -> Response:
    """The metrics for a loopback client or one with the token; 401 or 403 for others."""
    token = settings.metrics_token
    if not _may_read_metrics(request, token):
        if token is None:
            return PlainTextResponse(
                "/metrics is answered only on this machine: set metrics_token to scrape it"
                " from elsewhere",
                status_code=403,
            )
        return PlainTextResponse(
            "/metrics needs the metrics token: Authorization: Bearer <token>",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="tenhub metrics"'},
        )
    return Response(hub_metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _may_read_metrics(request: Request, token: str | None) -> bool:
    """Whether the client is on this machine, or presents the configured token."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    presented = given.strip() if scheme.lower() == "bearer" else ""
    # In constant time: how long a wrong guess takes must not tell how close it came.
    if token is not None and presented and hmac.compare_digest(presented.encode(), token.encode()):
        return True
    return _from_this_machine(request)


def _from_this_machine(request: Request) -> bool:
    """Whether the client, as the server saw it, is a loopback address of this machine.

    The address is the connection's peer, or the client a configured proxy names; a
    loopback peer that says it forwards someone else's request (a proxy on this machine
    not configured as one) is not a local client.
    """
    if request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_loopback:
        return False
    return "x-forwarded-for" not in request.headers and "forwarded" not in request.headers
