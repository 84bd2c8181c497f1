"""/healthz for load balancers and people, /metrics for Prometheus."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from hub.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Is the hub connected and able to store alarms?")
async def healthz(request: Request) -> JSONResponse:
    """200 when the broker is connected and the database answers; 503 otherwise, saying which."""
    hub = request.app.state.hub
    db_ok = True
    db_error = None
    try:
        await hub.db.read(lambda d: d.execute("SELECT 1").fetchone())
    except Exception as exc:
        db_ok, db_error = False, str(exc)
    connected = hub.transport.connected.is_set()
    body: dict[str, Any] = {
        "status": "ok" if connected and db_ok else "degraded",
        "broker": {"connected": connected, "url": hub.broker_address.display()},
        "database": {"ok": db_ok, "schema_version": hub.db.schema_version},
        "panels_online": hub.presence.online_count(),
        "channels": sorted(hub.sender.channels),
        "jobs": {runner.job.name: {"runs": runner.runs} for runner in hub.job_runners},
    }
    if db_error:
        body["database"]["error"] = db_error
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.hub.metrics.render(), media_type=CONTENT_TYPE_LATEST)
