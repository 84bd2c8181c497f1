"""Web Push as a patrol's phone lives it: the hub's key, the push, the dropped subscription.

Every push goes through the real pywebpush to the local push service, which checks VAPID
as a real one does and decrypts with the phone's keys.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from py_vapid.jwt import decode as decode_vapid_token

from alerts.channel import OutboxMessage, OutcomeUnknown, PermanentError, RetryableError
from alerts.push_channel import PushChannel, PushSubscription
from alerts.vapid import VapidKeys
from simulator.push_service import BrowserSubscription, PushService
from tests.brokers import free_port

SUBJECT = "mailto:desk@tenhub.example"
ALARM = json.dumps(
    {
        "title": "Alarm: house 4, unit 1",
        "body": "Intrusion reported 21:04. Tap to acknowledge.",
        "alarm_id": "a-0001",
        "ack_url": "https://hub.example/ack/a-0001?t=Zq3xkE",
    }
)


class Subscriptions:
    """The hub's side: subscription ids to subscriptions, and the ids it was told to forget."""

    def __init__(self) -> None:
        self.known: dict[str, PushSubscription] = {}
        self.forgotten: list[str] = []

    def add(self, sub_id: str, browser: BrowserSubscription) -> None:
        sent = browser.to_json()  # what the phone's web app posts to the hub
        self.known[sub_id] = PushSubscription(
            sub_id, sent["endpoint"], sent["keys"]["p256dh"], sent["keys"]["auth"]
        )

    async def lookup(self, sub_id: str) -> PushSubscription | None:
        return self.known.get(sub_id)

    async def forget(self, sub_id: str) -> None:
        self.forgotten.append(sub_id)
        self.known.pop(sub_id, None)


def message(recipient: str, payload: str = ALARM) -> OutboxMessage:
    return OutboxMessage(
        id=1,
        alarm_id="a-0001",
        channel="push",
        recipient=recipient,
        payload=payload,
        idempotency_key=f"a-0001:{recipient}",
        attempts=0,
    )


@pytest.fixture
def service():
    with PushService() as running:
        yield running


@pytest.fixture
def keys(tmp_path) -> VapidKeys:
    return VapidKeys.load_or_create(tmp_path / "vapid.pem", SUBJECT)


@pytest.fixture
def subs() -> Subscriptions:
    return Subscriptions()


@pytest.fixture
def channel(keys, subs) -> PushChannel:
    return PushChannel(keys, subs.lookup, subs.forget)


def test_vapid_key_is_made_once_and_kept(tmp_path):
    path = tmp_path / "keys" / "vapid.pem"
    first = VapidKeys.load_or_create(path, SUBJECT)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == first.private_key_pem
    assert [p.name for p in path.parent.iterdir()] == ["vapid.pem"]  # no temp file left

    again = VapidKeys.load_or_create(path, SUBJECT)
    assert again.public_key_b64url == first.public_key_b64url
    public = first.public_key_b64url
    point = base64.urlsafe_b64decode(public + "=" * (-len(public) % 4))
    assert len(point) == 65 and point[0] == 4 and "=" not in public


def test_subject_must_be_mailto_or_https(tmp_path):
    with pytest.raises(ValueError):
        VapidKeys.load_or_create(tmp_path / "vapid.pem", "desk@tenhub.example")
    assert not (tmp_path / "vapid.pem").exists()


async def test_alarm_push_reaches_the_patrol_phone(service, keys, subs, channel):
    phone = service.new_subscription(application_server_key=keys.public_key_b64url)
    subs.add("patrol-1", phone)

    location = await channel.send(message("patrol-1"))

    [push] = service.wait_for(1, phone.token)
    assert push.payload == ALARM.encode()
    assert push.json["ack_url"] == "https://hub.example/ack/a-0001?t=Zq3xkE"
    assert (push.urgency, push.ttl, push.vapid_sub) == ("high", 300, SUBJECT)
    assert location is not None and location.startswith(service.base_url)
    # The signature checks out against the hub's public key, by a verifier of its own.
    assert push.vapid_key == keys.public_key_b64url
    token = push.headers["authorization"].split("t=")[1].split(",")[0]
    claims = decode_vapid_token(token, keys.public_key_b64url)
    assert claims["aud"] == service.base_url and claims["exp"] > time.time()


async def test_dropped_subscription_is_forgotten(service, keys, subs, channel):
    phone = service.new_subscription(application_server_key=keys.public_key_b64url)
    subs.add("desk-1", phone)
    service.expire(phone.token)

    with pytest.raises(PermanentError, match="gone"):
        await channel.send(message("desk-1"))

    assert subs.forgotten == ["desk-1"]
    assert service.received() == []


async def test_push_service_error_is_retried(service, keys, subs, channel):
    phone = service.new_subscription(application_server_key=keys.public_key_b64url)
    subs.add("patrol-1", phone)
    service.fail_next(1, status=500)

    with pytest.raises(RetryableError):
        await channel.send(message("patrol-1"))
    await channel.send(message("patrol-1"))

    assert len(service.wait_for(1, phone.token)) == 1
    assert subs.forgotten == []


@pytest.mark.parametrize(
    ("status", "verdict", "forgotten"),
    [
        (429, RetryableError, []),
        (503, RetryableError, []),
        (404, PermanentError, ["patrol-1"]),
        (400, PermanentError, []),
        (413, PermanentError, []),
    ],
)
async def test_push_service_answer_decides_the_verdict(
    service, keys, subs, channel, status, verdict, forgotten
):
    subs.add("patrol-1", service.new_subscription(application_server_key=keys.public_key_b64url))
    service.fail_next(1, status=status)

    with pytest.raises(verdict, match=str(status)):
        await channel.send(message("patrol-1"))

    assert subs.forgotten == forgotten


async def test_unknown_subscription_is_permanent(channel):
    with pytest.raises(PermanentError, match="subscription gone"):
        await channel.send(message("nobody"))


async def test_unreachable_push_service_is_retried(keys, subs, channel):
    subs.known["patrol-1"] = PushSubscription(
        "patrol-1", f"http://127.0.0.1:{free_port()}/push/x", *_browser_keys()
    )
    with pytest.raises(RetryableError):
        await channel.send(message("patrol-1"))


async def test_silent_push_service_is_outcome_unknown(keys, subs):
    # The kernel accepts the connection and takes the request; nobody ever answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        subs.known["patrol-1"] = PushSubscription(
            "patrol-1", f"http://127.0.0.1:{port}/push/x", *_browser_keys()
        )
        channel = PushChannel(keys, subs.lookup, subs.forget, timeout_s=0.3)
        with pytest.raises(OutcomeUnknown):
            await channel.send(message("patrol-1"))


def _sign(key: ec.EllipticCurvePrivateKey, **claims) -> str:
    claims = {"sub": SUBJECT, "exp": int(time.time()) + 3600} | claims
    return Vapid(key, conf={"no-strict": True}).sign(claims)["Authorization"]


@pytest.mark.parametrize(
    ("forge", "status"),
    [
        ("another key", 403),
        ("another key claiming the hub's", 401),
        ("wrong aud", 401),
        ("expired", 401),
        ("more than 24 h ahead", 401),
        ("no header", 401),
    ],
)
def test_service_refuses_forged_vapid(service, keys, forge, status):
    phone = service.new_subscription(application_server_key=keys.public_key_b64url)
    other = ec.generate_private_key(ec.SECP256R1())
    aud = service.base_url
    authorization = {
        "another key": _sign(other, aud=aud),
        "another key claiming the hub's": _sign(other, aud=aud).split(",k=")[0]
        + ",k="
        + keys.public_key_b64url,
        "wrong aud": _sign(keys.private_key, aud="https://push.example.net"),
        "expired": _sign(keys.private_key, aud=aud, exp=int(time.time()) - 10),
        "more than 24 h ahead": _sign(keys.private_key, aud=aud, exp=int(time.time()) + 90_000),
        "no header": None,
    }[forge]
    headers = {"Content-Encoding": "aes128gcm", "TTL": "60"}
    if authorization:
        headers["Authorization"] = authorization

    response = httpx.post(phone.endpoint, headers=headers, content=b"\0" * 64)

    assert response.status_code == status, response.text
    assert response.json()["message"]
    assert service.received() == []


def test_service_checks_endpoint_encoding_and_ttl(service, keys):
    phone = service.new_subscription(application_server_key=keys.public_key_b64url)
    good = {
        "Authorization": _sign(keys.private_key, aud=service.base_url),
        "Content-Encoding": "aes128gcm",
        "TTL": "60",
    }

    def post(url: str, headers: dict[str, str]) -> int:
        return httpx.post(url, headers=headers, content=b"\0" * 64).status_code

    assert post(f"{service.base_url}/push/unknown", good) == 404
    assert post(phone.endpoint, good | {"Content-Encoding": "aesgcm"}) == 400
    assert post(phone.endpoint, {k: v for k, v in good.items() if k != "TTL"}) == 400
    assert service.received() == []


def _browser_keys() -> tuple[str, str]:
    """A real client key and auth secret, so pywebpush gets as far as the network."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return _b64(point), _b64(os.urandom(16))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
