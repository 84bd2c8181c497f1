"""Web: the police desk, the alarm pages, the patrol's phone page, admin, and the JSON API.

Pages and routes (FastAPI) get the parts of the hub they use as typed dependencies
(`hub.web.services`), handed over by the wiring in `hub.app`; nothing here imports the
wiring. Also the Twilio webhooks, Web Push subscriptions, health and metrics.
"""

from hub.web.app import create_web_app
from hub.web.services import BrokerLink, LiveRegistry, WebServices

__all__ = ["BrokerLink", "LiveRegistry", "WebServices", "create_web_app"]
