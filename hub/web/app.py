"""Builds the FastAPI application from the running hub's parts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from hub.web import ack_links, alarms_api, health, twilio_hooks

if TYPE_CHECKING:
    from hub.app import Hub


def create_web_app(hub: Hub) -> FastAPI:
    """The web application of one hub; routes reach the hub through `app.state.hub`."""
    app = FastAPI(
        title="tenhub",
        summary="Hub of a ten-household joint alarm network",
        version="0.1.0",
    )
    app.state.hub = hub
    app.include_router(health.router)
    app.include_router(alarms_api.router)
    app.include_router(twilio_hooks.router)
    app.include_router(ack_links.router)
    return app
