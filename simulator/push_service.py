"""A local Web Push service, checking each push as Mozilla's or Google's servers do.

It also plays the browsers: it makes their subscriptions and keeps their private keys,
so it can decrypt what arrives and a test can read what the hub meant to send.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import http_ece
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

MAX_BODY = 4096  # what push services accept (RFC 8291 §4)
MAX_VAPID_LIFETIME_S = 24 * 3600  # RFC 8292 §2
URGENCIES = ("very-low", "low", "normal", "high")


@dataclass(frozen=True, slots=True)
class BrowserSubscription:
    """What `pushManager.subscribe()` gives the app: the endpoint and the client's keys."""

    token: str
    endpoint: str
    p256dh: str
    auth: str

    def to_json(self) -> dict[str, Any]:
        """The subscription as the browser's `PushSubscription.toJSON()` shapes it."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        }


@dataclass(frozen=True, slots=True)
class ReceivedPush:
    """One push the service accepted, decrypted as the browser would."""

    token: str
    payload: bytes | None  # None: the browser could not decrypt it and would drop it
    json: Any  # the payload parsed, None when it is not JSON
    ttl: int
    urgency: str | None
    topic: str | None
    vapid_sub: str
    vapid_key: str  # the `k` the push was signed with
    headers: dict[str, str]
    received_at: float


class VapidRejected(Exception):
    """A push refused for its VAPID header: 401 (invalid) or 403 (not this subscription's key)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Browser:
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    server_key: str | None  # the applicationServerKey the subscription is bound to
    gone: bool = False


class PushService:
    """The push service on a local port (uvicorn in a thread); `base_url` once started."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.base_url = ""
        self.app = FastAPI()
        self.app.add_api_route("/push/{token}", self._push, methods=["POST"])
        self._browsers: dict[str, _Browser] = {}
        self._received: list[ReceivedPush] = []
        self._failures: list[int] = []
        self._changed = threading.Condition()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Listen and serve in a background thread; return once it accepts requests."""
        self._socket = socket.create_server((self.host, self.port))
        self.port = self._socket.getsockname()[1]
        self.base_url = f"http://{self.host}:{self.port}"
        # log_config=None: a test's or the demo's logging setup stays as it was.
        config = uvicorn.Config(
            self.app, lifespan="off", access_log=False, log_config=None, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="push-service",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("push service did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server and self._thread:
            self._server.should_exit = True
            self._thread.join(10)
        if self._socket:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> PushService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def new_subscription(self, application_server_key: str | None = None) -> BrowserSubscription:
        """Subscribe a new browser; bound to `application_server_key` when given, as browsers do."""
        if not self.base_url:
            raise RuntimeError("start the push service first")
        private_key = ec.generate_private_key(ec.SECP256R1())
        auth_secret = os.urandom(16)
        token = secrets.token_urlsafe(16)
        with self._changed:
            self._browsers[token] = _Browser(private_key, auth_secret, application_server_key)
        point = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return BrowserSubscription(
            token, f"{self.base_url}/push/{token}", _b64(point), _b64(auth_secret)
        )

    def expire(self, token: str) -> None:
        """The browser unsubscribed: pushes to `token` get 410 from now on."""
        with self._changed:
            self._browsers[token].gone = True

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next `n` pushes with `status`, whatever they hold."""
        with self._changed:
            self._failures.extend([status] * n)

    def received(self, token: str | None = None) -> list[ReceivedPush]:
        """Every push accepted so far (for `token` only, when given), oldest first."""
        with self._changed:
            return [p for p in self._received if token is None or p.token == token]

    def wait_for(
        self, count: int, token: str | None = None, timeout: float = 5.0
    ) -> list[ReceivedPush]:
        """Block until `count` pushes (for `token`) have arrived; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received(token)) >= count, timeout):
                raise TimeoutError(f"{len(self.received(token))} of {count} pushes arrived")
            return self.received(token)

    async def _push(self, token: str, request: Request) -> Response:
        with self._changed:
            failure = self._failures.pop(0) if self._failures else None
            browser = self._browsers.get(token)
        if failure is not None:
            return _error(failure, "failure on demand")
        if browser is None:
            return _error(404, "no such subscription")
        if browser.gone:
            return _error(410, "subscription expired")
        try:
            claims, key = verify_vapid(request.headers.get("authorization"), self.base_url)
            if browser.server_key is not None and key != browser.server_key:
                raise VapidRejected(403, "key does not match the subscription's key")
        except VapidRejected as exc:
            return _error(exc.status, exc.reason)
        if request.headers.get("content-encoding", "").lower() != "aes128gcm":
            return _error(400, "Content-Encoding must be aes128gcm")
        ttl = request.headers.get("ttl", "")
        if not ttl.isdigit():
            return _error(400, "missing or invalid TTL header")
        urgency = request.headers.get("urgency")
        if urgency is not None and urgency not in URGENCIES:
            return _error(400, f"invalid Urgency {urgency!r}")
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, f"payload of {len(body)} bytes is over {MAX_BODY}")
        payload = _decrypt(body, browser)
        push = ReceivedPush(
            token=token,
            payload=payload,
            json=_parse(payload),
            ttl=int(ttl),
            urgency=urgency,
            topic=request.headers.get("topic"),
            vapid_sub=claims["sub"],
            vapid_key=key,
            headers=dict(request.headers),
            received_at=time.time(),
        )
        with self._changed:
            self._received.append(push)
            self._changed.notify_all()
        location = f"{self.base_url}/m/{secrets.token_urlsafe(12)}"
        return Response(status_code=201, headers={"Location": location})


def verify_vapid(
    authorization: str | None, audience: str, now: float | None = None
) -> tuple[dict[str, Any], str]:
    """The claims and key `k` of a valid `vapid t=…, k=…` header; VapidRejected(401) if not."""
    now = time.time() if now is None else now
    scheme, _, params = (authorization or "").partition(" ")
    if scheme.lower() != "vapid":
        raise VapidRejected(401, "missing VAPID authorization")
    fields = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
    token, key = fields.get("t"), fields.get("k")
    if not token or not key:
        raise VapidRejected(401, "VAPID header needs t= and k=")
    claims = _verified_claims(token, key)
    if claims.get("aud") != audience:
        raise VapidRejected(401, f"aud {claims.get('aud')!r} is not {audience!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now:
        raise VapidRejected(401, "token expired or without exp")
    if exp > now + MAX_VAPID_LIFETIME_S:
        raise VapidRejected(401, "exp more than 24 h ahead")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
        raise VapidRejected(401, "sub must be a mailto: or https: URL")
    return claims, key


def _verified_claims(token: str, key: str) -> dict[str, Any]:
    """The claims of an ES256 JWT whose signature checks out against `key`."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_unb64(header_b64))
        claims = json.loads(_unb64(claims_b64))
        signature = _unb64(signature_b64)
        point = _unb64(key)
        if len(point) != 65 or point[0] != 4:
            raise ValueError("k is not an uncompressed P-256 point")
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:  # also bad base64, JSON and UTF-8
        raise VapidRejected(401, f"malformed VAPID token: {exc}") from exc
    if not isinstance(header, dict) or header.get("alg") != "ES256":
        raise VapidRejected(401, "VAPID token must be ES256")
    if not isinstance(claims, dict) or len(signature) != 64:
        raise VapidRejected(401, "malformed VAPID token")
    # JWS carries r‖s; cryptography wants DER.
    der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
    try:
        public_key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VapidRejected(401, "VAPID signature does not match k") from exc
    return claims


def _decrypt(body: bytes, browser: _Browser) -> bytes | None:
    try:
        return http_ece.decrypt(
            body,
            private_key=browser.private_key,
            auth_secret=browser.auth_secret,
            version="aes128gcm",
        )
    except Exception:  # a real service cannot tell; the browser would drop it silently
        logger.warning("push could not be decrypted", exc_info=True)
        return None


def _parse(payload: bytes | None) -> Any:
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return None


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": reason}, status_code=status)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
