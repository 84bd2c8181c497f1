"""Builds the FastAPI application from the running hub's parts."""

from __future__ import annotations

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
from hub.web.services import WebServices, attach


def create_web_app(services: WebServices) -> FastAPI:
    """The web application of one hub; routes get its parts as typed dependencies."""
    app = FastAPI(
        title="tenhub",
        summary="Hub of a ten-household joint alarm network",
        version="0.1.0",
    )
    attach(app, services)
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
