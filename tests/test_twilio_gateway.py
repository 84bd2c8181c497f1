"""The `sms` and `voice` channels, through the real twilio client, against the local gateway.

The hub's side of the webhooks is played by a small HTTP receiver that checks every
signature the way the hub does, with twilio's RequestValidator.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest
from twilio.request_validator import RequestValidator

from alerts import twilio_channels
from alerts.channel import OutboxMessage, OutcomeUnknown, PermanentError, RetryableError
from alerts.twilio_channels import (
    SmsChannel,
    TwilioSettings,
    VoiceChannel,
    async_twilio_client,
    twilio_client,
)
from simulator.gateway_process import GatewayProcess
from simulator.twilio_gateway import TwilioGateway
from simulator.twilio_store import SentMessage
from tests.tls_certs import make_tls_files

HUB_NUMBER = "+15550001000"
ALICE = "+15550000101"
BOB = "+15550000102"


@dataclass(frozen=True)
class Hit:
    """One webhook request as the receiver saw it."""

    method: str
    url: str
    params: dict[str, str]
    signature: str


class WebhookReceiver:
    """Plays the hub's webhooks: records each request and answers with a little TwiML."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self._cond = threading.Condition()
        # Called with each request's form before it is recorded and answered: a hub slow
        # to answer.
        self.before_answer: Callable[[dict[str, str]], None] = lambda params: None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self._record(dict(parse_qsl(self.rfile.read(length).decode())))

            def do_GET(self) -> None:
                self._record({})

            def _record(self, params: dict[str, str]) -> None:
                receiver.before_answer(params)
                hit = Hit(
                    self.command,
                    receiver.url + self.path,
                    params,
                    self.headers.get("X-Twilio-Signature", ""),
                )
                with receiver._cond:
                    receiver.hits.append(hit)
                    receiver._cond.notify_all()
                body = b"<Response><Message>Thanks, you are on the way.</Message></Response>"
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def wait_for(self, count: int, path: str, timeout: float = 5.0) -> list[Hit]:
        """Block until `count` requests reached `path`; return those that did."""

        def at_path() -> list[Hit]:
            return [h for h in self.hits if urlsplit(h.url).path == path]

        with self._cond:
            self._cond.wait_for(lambda: len(at_path()) >= count, timeout)
            return at_path()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def gateway() -> Iterator[TwilioGateway]:
    gw = TwilioGateway(callback_delay_s=0.02).start()
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
async def channels_closed_after(monkeypatch):
    """Every SMS or voice channel a test makes is closed when the test ends (its
    connections belong to the test's event loop)."""
    made: list[SmsChannel | VoiceChannel] = []
    for cls in (SmsChannel, VoiceChannel):

        def init(self, *args, _init=cls.__init__, **kwargs):
            _init(self, *args, **kwargs)
            made.append(self)

        monkeypatch.setattr(cls, "__init__", init)
    yield
    for channel in made:
        await channel.close()


@pytest.fixture
def hub_webhooks() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def settings(gateway: TwilioGateway, hub_webhooks: WebhookReceiver) -> TwilioSettings:
    return TwilioSettings(
        account_sid=gateway.account_sid,
        auth_token=gateway.auth_token,
        from_number=HUB_NUMBER,
        api_base=gateway.base_url,
        status_callback_url=f"{hub_webhooks.url}/twilio/status",
        timeout_s=2.0,
    )


def outbox(recipient: str, channel: str = "sms", **payload: str) -> OutboxMessage:
    return OutboxMessage(
        id=1,
        alarm_id="a-1",
        channel=channel,
        recipient=recipient,
        payload=json.dumps(payload),
        idempotency_key="k-1",
        attempts=0,
    )


def assert_signed(hit: Hit, auth_token: str) -> None:
    assert hit.signature
    assert RequestValidator(auth_token).validate(hit.url, hit.params, hit.signature)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A TCP relay in front of the gateway, as the network between hub and Twilio: it
    counts the connections made through it and can lose or garble the next answer."""

    def __init__(self, target: str) -> None:
        self.target = urlsplit(target)
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        # What happens to the next answer: None (passed on), "cut" (the connection
        # closes before it) or "garble" (something that is not HTTP comes instead).
        self.fault: str | None = None
        self.server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        """Listen; the base URL to send to."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=tls)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        upstream_r, upstream_w = await asyncio.open_connection(
            self.target.hostname, self.target.port
        )

        async def requests() -> None:
            while data := await client_r.read(65536):
                upstream_w.write(data)
            upstream_w.close()

        forward = asyncio.create_task(requests())
        try:
            while data := await upstream_r.read(65536):
                fault, self.fault = self.fault, None
                if fault == "cut":
                    return
                client_w.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n" if fault == "garble" else data)
                await client_w.drain()
                if fault == "garble":
                    return
        except ConnectionError:
            pass
        finally:
            self.open_now -= 1
            forward.cancel()
            client_w.close()
            upstream_w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def relay(gateway: TwilioGateway) -> AsyncIterator[Relay]:
    r = Relay(gateway.base_url)
    yield r
    await r.stop()


# -- SMS -----------------------------------------------------------------------------------


async def test_an_sms_reaches_the_gateway_as_sent(settings, gateway):
    before = time.monotonic()
    sid = await SmsChannel(settings).send(outbox(ALICE, text="Alarm at 2-101: burglary."))

    [sms] = gateway.messages(to=ALICE)
    assert (sms.sid, sms.to, sms.from_, sms.body) == (
        sid,
        ALICE,
        HUB_NUMBER,
        "Alarm at 2-101: burglary.",
    )
    assert sid.startswith("SM") and len(sid) == 34
    # When the request reached the gateway, before its parsing (the bench times SMS by it).
    assert sms.arrived is not None and before < sms.arrived < time.monotonic()


async def test_status_callbacks_are_signed_and_say_sent_then_delivered(
    settings, gateway, hub_webhooks
):
    sid = await SmsChannel(settings).send(outbox(ALICE, text="Alarm"))

    hits = hub_webhooks.wait_for(2, "/twilio/status")
    assert [h.params["MessageStatus"] for h in hits] == ["sent", "delivered"]
    for hit in hits:
        assert hit.params["MessageSid"] == sid
        assert (hit.params["To"], hit.params["From"]) == (ALICE, HUB_NUMBER)
        assert_signed(hit, settings.auth_token)
    assert not RequestValidator("another-token").validate(
        hits[0].url, hits[0].params, hits[0].signature
    )
    assert twilio_client(settings).messages(sid).fetch().status == "delivered"


async def test_a_hub_slow_to_answer_one_callback_does_not_hold_back_the_others(
    settings, gateway, hub_webhooks
):
    held, release = threading.Event(), threading.Event()
    held_sid: list[str] = []

    def hold_the_first(params: dict[str, str]) -> None:
        if not held.is_set():
            held_sid.append(params["MessageSid"])
            held.set()
            release.wait(5)

    hub_webhooks.before_answer = hold_the_first
    channel = SmsChannel(settings)
    sids = [
        await channel.send(replace(outbox(f"+155500002{i:02d}", text="Alarm"), id=i))
        for i in range(8)
    ]
    await asyncio.to_thread(held.wait, 5)
    # While the hub sits on one message's report, the other messages' reports go on.
    others = await asyncio.to_thread(hub_webhooks.wait_for, 4, "/twilio/status", 5.0)
    release.set()
    assert len(others) >= 4 and held_sid[0] not in {h.params["MessageSid"] for h in others}

    # Each message's own reports still come in order: sent, then delivered.
    hits = await asyncio.to_thread(hub_webhooks.wait_for, 16, "/twilio/status", 5.0)
    for sid in sids:
        said = [h.params["MessageStatus"] for h in hits if h.params["MessageSid"] == sid]
        assert said == ["sent", "delivered"], sid


async def test_an_unreachable_phone_is_reported_undelivered(settings, gateway, hub_webhooks):
    gateway.fail_delivery(BOB)

    await SmsChannel(settings).send(outbox(BOB, text="Alarm"))

    hits = hub_webhooks.wait_for(2, "/twilio/status")
    assert [h.params["MessageStatus"] for h in hits] == ["sent", "undelivered"]
    assert hits[1].params["ErrorCode"] == "30003"


# -- voice ---------------------------------------------------------------------------------


async def test_a_call_carries_its_twiml_and_reports_its_progress(settings, gateway, hub_webhooks):
    twiml = "<Response><Say>Fire at 2-101.</Say></Response>"
    sid = await VoiceChannel(settings).send(outbox(ALICE, "voice", twiml=twiml, text="unused"))

    [call] = gateway.calls(to=ALICE)
    assert (call.sid, call.from_, call.twiml) == (sid, HUB_NUMBER, twiml)
    assert sid.startswith("CA") and len(sid) == 34
    hits = hub_webhooks.wait_for(4, "/twilio/status")
    assert [h.params["CallStatus"] for h in hits] == [
        "initiated",
        "ringing",
        "in-progress",
        "completed",
    ]
    for hit in hits:
        assert_signed(hit, settings.auth_token)


async def test_a_call_without_twiml_says_the_text(settings, gateway):
    await VoiceChannel(settings).send(outbox(BOB, "voice", text="Gas <leak> & smoke"))

    [call] = gateway.calls(to=BOB)
    assert call.twiml == "<Response><Say>Gas &lt;leak&gt; &amp; smoke</Say></Response>"


async def test_an_unanswered_call_ends_in_no_answer(settings, gateway, hub_webhooks):
    gateway.fail_call(BOB, "no-answer")

    await VoiceChannel(settings).send(outbox(BOB, "voice", text="Alarm"))

    hits = hub_webhooks.wait_for(3, "/twilio/status")
    assert [h.params["CallStatus"] for h in hits] == ["initiated", "ringing", "no-answer"]


# -- errors: never twice, never lost -------------------------------------------------------


async def test_wrong_credentials_fail_for_good(settings, gateway):
    wrong = replace(settings, auth_token="not-the-token")

    with pytest.raises(PermanentError, match=r"401.*20003"):
        await SmsChannel(wrong).send(outbox(ALICE, text="Alarm"))
    assert gateway.messages() == []


@pytest.mark.parametrize("channel", [SmsChannel, VoiceChannel])
async def test_an_invalid_number_fails_for_good_with_twilios_code(settings, gateway, channel):
    with pytest.raises(PermanentError, match="21211") as failure:
        await channel(settings).send(outbox("555-0101", text="Alarm"))

    assert "not a valid phone number" in str(failure.value)
    assert gateway.messages() == [] and gateway.calls() == []


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_provider_error_is_retried_and_the_retry_sends_once(settings, gateway, status):
    gateway.fail_next(1, status)
    sms = SmsChannel(settings)

    with pytest.raises(RetryableError, match=str(status)):
        await sms.send(outbox(ALICE, text="Alarm"))
    sid = await sms.send(outbox(ALICE, text="Alarm"))

    assert [m.sid for m in gateway.messages()] == [sid]


async def test_a_lost_answer_is_an_unknown_outcome_and_the_message_exists_once(settings, gateway):
    gateway.hang_next(1, 3)
    impatient = replace(settings, timeout_s=0.5)

    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        await SmsChannel(impatient).send(outbox(ALICE, text="Alarm"))

    assert time.monotonic() - started < 2
    assert [m.body for m in gateway.messages(to=ALICE)] == ["Alarm"]


async def test_a_stopped_gateway_is_retried_later(settings, gateway):
    gateway.stop()

    with pytest.raises(RetryableError, match="refused"):
        await SmsChannel(settings).send(outbox(ALICE, text="Alarm"))


async def test_a_closed_port_is_retried_later(settings):
    nowhere = replace(settings, api_base=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(RetryableError, match="refused"):
        await VoiceChannel(nowhere).send(outbox(ALICE, "voice", text="Alarm"))


async def test_a_connect_timeout_is_retried_later(settings):
    # A listener whose accept queue is full drops new SYNs: the connect times out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for s in fillers:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
    try:
        probe = socket.create_connection(("127.0.0.1", port), timeout=0.3)
        probe.close()
        pytest.skip("this system accepts connections past a full backlog")
    except TimeoutError:
        pass
    stalled = replace(settings, api_base=f"http://127.0.0.1:{port}", timeout_s=0.3)
    try:
        with pytest.raises(RetryableError, match="timed out"):
            await SmsChannel(stalled).send(outbox(ALICE, text="Alarm"))
    finally:
        for s in [*fillers, listener]:
            s.close()


async def test_an_answer_lost_with_its_connection_is_an_unknown_outcome(settings, gateway, relay):
    through = replace(settings, api_base=await relay.start())
    relay.fault = "cut"

    with pytest.raises(OutcomeUnknown, match="connection to Twilio lost"):
        await SmsChannel(through).send(outbox(ALICE, text="Alarm"))

    assert [m.body for m in gateway.messages(to=ALICE)] == ["Alarm"]


async def test_an_answer_that_is_not_http_is_an_unknown_outcome(settings, gateway, relay):
    through = replace(settings, api_base=await relay.start())
    relay.fault = "garble"

    with pytest.raises(OutcomeUnknown):
        await VoiceChannel(through).send(outbox(ALICE, "voice", text="Alarm"))

    assert [c.to for c in gateway.calls()] == [ALICE]


async def test_a_certificate_nobody_vouches_for_is_refused_before_sending(
    settings, gateway, relay, tmp_path
):
    files = make_tls_files(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(files.cert, files.key)
    through = replace(settings, api_base=await relay.start(tls))

    with pytest.raises(RetryableError, match="TLS failed"):
        await SmsChannel(through).send(outbox(ALICE, text="Alarm"))

    assert gateway.messages() == []


async def test_an_unresolvable_host_is_retried_later(settings):
    nowhere = replace(settings, api_base="http://twilio-gateway.invalid")

    with pytest.raises(RetryableError, match="cannot resolve the host"):
        await SmsChannel(nowhere).send(outbox(ALICE, text="Alarm"))


# -- connections ---------------------------------------------------------------------------


async def test_many_sms_share_one_kept_alive_connection(settings, gateway, relay):
    through = replace(settings, api_base=await relay.start())
    sms = SmsChannel(through)

    for i in range(5):
        await sms.send(replace(outbox(ALICE, text=f"Alarm {i}"), id=i))

    assert len(gateway.messages(to=ALICE)) == 5
    assert relay.connections == 1


async def test_no_more_connections_than_the_pool_allows(settings, gateway, relay):
    through = replace(settings, api_base=await relay.start())
    sms = SmsChannel(through, async_twilio_client(through, pool_size=3))

    await asyncio.gather(
        *(sms.send(replace(outbox(f"+155500003{i:02d}", text="Alarm"), id=i)) for i in range(20))
    )

    assert len(gateway.messages()) == 20
    assert relay.most_open <= 3


async def test_a_connection_idle_too_long_is_not_reused(settings, gateway, relay, monkeypatch):
    # The server may be closing it meanwhile (uvicorn does after 5 s idle): a POST written
    # into it could be lost without telling whether it arrived.
    monkeypatch.setattr(twilio_channels, "IDLE_S", 0.2)
    through = replace(settings, api_base=await relay.start())
    sms = SmsChannel(through)

    await sms.send(outbox(ALICE, text="first"))
    await sms.send(outbox(ALICE, text="right after"))
    assert relay.connections == 1
    await asyncio.sleep(0.4)  # idle past IDLE_S
    await sms.send(outbox(ALICE, text="a while later"))

    assert relay.connections == 2
    assert len(gateway.messages(to=ALICE)) == 3


async def test_an_unusable_payload_fails_for_good(settings, gateway):
    with pytest.raises(PermanentError):
        await SmsChannel(settings).send(outbox(ALICE, title="no text"))
    with pytest.raises(PermanentError):
        await VoiceChannel(settings).send(outbox(ALICE, "voice"))
    assert gateway.messages() == [] and gateway.calls() == []


# -- the phones answer ---------------------------------------------------------------------


async def test_an_sms_reply_is_posted_signed_to_the_hub(settings, gateway, hub_webhooks):
    await SmsChannel(settings).send(outbox(ALICE, text="Alarm. Reply 4821 to acknowledge."))

    response = gateway.reply(ALICE, "ACK 4821", f"{hub_webhooks.url}/twilio/sms")

    assert response.status_code == 200
    assert "<Message>Thanks, you are on the way.</Message>" in response.text
    [hit] = hub_webhooks.wait_for(1, "/twilio/sms")
    assert hit.params["From"] == ALICE
    assert hit.params["To"] == HUB_NUMBER  # the number that wrote to Alice
    assert hit.params["Body"] == "ACK 4821"
    assert hit.params["MessageSid"].startswith("SM")
    assert (hit.params["AccountSid"], hit.params["NumMedia"]) == (gateway.account_sid, "0")
    assert_signed(hit, settings.auth_token)


async def test_a_keypress_is_posted_signed_to_the_gathers_action(settings, gateway, hub_webhooks):
    action = f"{hub_webhooks.url}/twilio/voice?alarm_id=a-1&step=2"
    twiml = (
        f'<Response><Gather numDigits="1" method="POST" action="{escape(action)}">'
        "<Say>Press 1 to acknowledge.</Say></Gather></Response>"
    )
    sid = await VoiceChannel(settings).send(outbox(BOB, "voice", twiml=twiml))

    response = gateway.press(sid, "1")

    assert response.status_code == 200
    [hit] = hub_webhooks.wait_for(1, "/twilio/voice")
    assert hit.url == action
    assert hit.params["CallSid"] == sid
    assert hit.params["Digits"] == "1"
    assert (hit.params["From"], hit.params["To"], hit.params["Called"]) == (HUB_NUMBER, BOB, BOB)
    assert_signed(hit, settings.auth_token)


async def test_the_gateway_also_runs_in_the_tests_own_event_loop(hub_webhooks):
    # As when a hub shares the test's loop: nothing may block that loop.
    async with TwilioGateway(callback_delay_s=0.02).running() as gw:
        settings = TwilioSettings(
            gw.account_sid,
            gw.auth_token,
            HUB_NUMBER,
            gw.base_url,
            f"{hub_webhooks.url}/twilio/status",
            timeout_s=2.0,
        )
        await SmsChannel(settings).send(outbox(ALICE, text="Alarm"))
        [sms] = await gw.wait_for_messages_async(1, to=ALICE)
        response = await gw.reply_async(ALICE, "1", f"{hub_webhooks.url}/twilio/sms")

        assert sms.body == "Alarm"
        assert response.status_code == 200
        assert await asyncio.to_thread(gw.wait_for_status, sms.sid, "delivered")
    with pytest.raises(RetryableError):
        await SmsChannel(settings).send(outbox(ALICE, text="Alarm"))


# -- in a process of its own (the bench's) ---------------------------------------------------


async def test_a_gateway_in_its_own_process_tells_its_parent_of_each_sms(hub_webhooks):
    heard: list[SentMessage] = []
    told = threading.Event()
    gateway = GatewayProcess(phone_number=HUB_NUMBER, callback_delay_s=0.02)
    gateway.subscribe(lambda message: (heard.append(message), told.set()))
    await asyncio.to_thread(gateway.start)
    child = gateway.pid
    try:
        settings = TwilioSettings(
            account_sid=gateway.account_sid, auth_token=gateway.auth_token,
            from_number=HUB_NUMBER, api_base=gateway.base_url,
            status_callback_url=f"{hub_webhooks.url}/twilio/status", timeout_s=5.0,
        )  # fmt: skip
        before = time.monotonic()
        sid = await SmsChannel(settings).send(outbox(ALICE, text="Alarm a-1x: burglary."))
        assert await asyncio.to_thread(told.wait, 5), "the parent never heard of the SMS"
        [sms] = heard
        assert (sms.sid, sms.to, sms.from_, sms.body) == (
            sid,
            ALICE,
            HUB_NUMBER,
            "Alarm a-1x: burglary.",
        )
        # Stamped by the child on the clock every process shares: comparable with ours.
        assert sms.arrived is not None and before < sms.arrived < time.monotonic()
        hits = await asyncio.to_thread(hub_webhooks.wait_for, 2, "/twilio/status")
        assert [h.params["MessageStatus"] for h in hits] == ["sent", "delivered"]
        assert_signed(hits[0], gateway.auth_token)
    finally:
        await asyncio.to_thread(gateway.stop)
    assert gateway.pid is None
    with pytest.raises(ProcessLookupError):  # gone, not left serving
        os.kill(child, 0)
