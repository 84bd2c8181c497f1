"""The `push` channel: a Web Push notification, VAPID-signed, to a responder's phone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from py_vapid import VapidException
from pywebpush import WebPushException, webpush
from urllib3.exceptions import ConnectTimeoutError

from alerts.channel import OutboxMessage, OutcomeUnknown, PermanentError, RetryableError
from alerts.vapid import VapidKeys

logger = logging.getLogger(__name__)

# Push services accept a VAPID token for at most 24 h; half leaves room for clock skew.
VAPID_LIFETIME_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A browser's push subscription as the hub keeps it (keys base64url, as sent)."""

    id: str
    endpoint: str
    p256dh: str
    auth: str


LookupFn = Callable[[str], Awaitable[PushSubscription | None]]
ForgetFn = Callable[[str], Awaitable[None]]


class PushChannel:
    """Sends a message's JSON payload to the subscription its recipient names."""

    name = "push"
    # A second send is a second notification on the phone.
    idempotent = False
    remote = True

    def __init__(
        self,
        keys: VapidKeys,
        lookup: LookupFn,
        forget: ForgetFn,
        ttl_s: int = 300,
        timeout_s: float = 10.0,
    ) -> None:
        self._keys = keys
        self._lookup = lookup
        self._forget = forget
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s

    @property
    def public_key(self) -> str:
        """The VAPID public key browsers subscribe with (base64url)."""
        return self._keys.public_key_b64url

    async def send(self, message: OutboxMessage) -> str | None:
        """Push `message.payload` to subscription `message.recipient`; the message URL if any."""
        subscription = await self._lookup(message.recipient)
        if subscription is None:
            raise PermanentError("subscription gone")
        # pywebpush blocks (requests), so it runs off the event loop.
        response = await asyncio.to_thread(self._post, subscription, message.payload)
        status = response.status_code
        if 200 <= status < 300:
            return response.headers.get("Location")
        detail = f"push service answered {status}: {response.text[:200]}"
        if status in (404, 410):
            await self._forget_quietly(subscription.id)
            raise PermanentError(f"subscription gone ({detail})")
        if status == 429 or status >= 500:
            retry_after = response.headers.get("Retry-After")
            raise RetryableError(detail + (f" (Retry-After {retry_after})" if retry_after else ""))
        raise PermanentError(detail)

    def _post(self, subscription: PushSubscription, payload: str) -> requests.Response:
        """Blocking: encrypt and POST one push; the push service's answer, whatever its status."""
        try:
            return webpush(
                {
                    "endpoint": subscription.endpoint,
                    "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth},
                },
                data=payload,
                vapid_private_key=self._keys.vapid,
                vapid_claims=self._claims(subscription.endpoint),
                ttl=self._ttl_s,
                headers={"Urgency": "high"},
                timeout=self._timeout_s,
            )
        except WebPushException as exc:
            if exc.response is None:  # refused before sending: the subscription's keys
                raise PermanentError(exc.message) from exc
            return exc.response
        except requests.RequestException as exc:
            raise _classify(exc) from exc
        except ValueError as exc:  # keys that are not base64url or not a P-256 point
            raise PermanentError(f"unusable subscription keys: {exc}") from exc
        except VapidException as exc:  # an endpoint with no origin to sign for
            raise PermanentError(f"cannot sign for this endpoint: {exc}") from exc

    def _claims(self, endpoint: str) -> dict[str, str | int]:
        # A fresh dict each time: pywebpush writes into the claims it is given.
        parts = urlsplit(endpoint)
        return {
            "sub": self._keys.subject,
            "aud": f"{parts.scheme}://{parts.netloc}",
            "exp": int(time.time()) + VAPID_LIFETIME_S,
        }

    async def _forget_quietly(self, subscription_id: str) -> None:
        try:
            await self._forget(subscription_id)
        except Exception:
            # The send has failed for good either way; the next push to it will try again.
            logger.exception(
                "could not forget a dropped subscription", extra={"subscription": subscription_id}
            )
        else:
            logger.info("forgot a dropped subscription", extra={"subscription": subscription_id})


def _classify(exc: requests.RequestException) -> Exception:
    """The channel's verdict on a request that got no HTTP answer."""
    if isinstance(exc, ValueError):  # a malformed endpoint URL: nothing was sent
        return PermanentError(f"unusable push endpoint: {exc}")
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return RetryableError(f"push service unreachable: {exc}")
    if isinstance(exc, requests.ReadTimeout):
        return OutcomeUnknown(f"no answer from the push service: {exc}")
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    # urllib3's own test for "the server did not receive the request" (refused,
    # unresolved, connect timeout); anything else may have happened after sending.
    if isinstance(exc, requests.ConnectionError) and isinstance(reason, ConnectTimeoutError):
        return RetryableError(f"push service unreachable: {exc}")
    return OutcomeUnknown(f"push request broke off: {exc}")
