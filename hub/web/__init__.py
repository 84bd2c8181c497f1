"""The hub's HTTP side: health, metrics and the JSON API (FastAPI)."""

from hub.web.app import create_web_app
from hub.web.services import BrokerLink, LiveRegistry, WebServices

__all__ = ["BrokerLink", "LiveRegistry", "WebServices", "create_web_app"]
