"""Builds the FastAPI application from the running hub's parts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from hub.web import (
    ack_links,
    alarms_api,
    auth,
    events_api,
    health,
    pages,
    push_api,
    registry_api,
    troubles_api,
    twilio_hooks,
    users_api,
)

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
    auth.install_auth(app)
    for module in (
        health,
        auth,
        alarms_api,
        registry_api,
        troubles_api,
        events_api,
        push_api,
        users_api,
        twilio_hooks,
        ack_links,
        pages,
    ):
        app.include_router(module.router)
    pages.mount_static(app)
    return app
