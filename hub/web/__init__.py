"""The hub's HTTP side: health, metrics and the JSON API (FastAPI)."""

from hub.web.app import create_web_app

__all__ = ["create_web_app"]
