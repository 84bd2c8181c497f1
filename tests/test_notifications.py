"""Alerts reach people: SMS and calls through the real twilio client to the local gateway,
Web Push to a local push service, replies that acknowledge — as the patrol and the desk
live it. The hub's clock is moved by the test; the gateway and push service are real servers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from urllib.parse import urlsplit

import httpx
import pytest

from devices.protocol import ReceiptStatus
from hub.clock import ManualClock
from hub.web.twilio_hooks import signature_of
from simulator.push_service import PushService
from simulator.twilio_gateway import TwilioGateway
from tests.conftest import HubRunner, db_url_of, first_step_recorded
from tests.waiting import until as _until

pytestmark = pytest.mark.asyncio

HUB_NUMBER = "+15550001000"
DESK = "+15550009911"
PATROL_1, PATROL_2 = "+15550009001", "+15550009002"
KEY_HOUSEHOLD = "+15550000101"  # u-0001/h-01, key household of u-0001
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def gateway():
    gw = TwilioGateway(phone_number=HUB_NUMBER, callback_delay_s=0.01)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def push_service():
    service = PushService()
    service.start()
    yield service
    service.stop()


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
async def runner(mosquitto, tmp_path, registry, gateway, clock, db_target):
    r = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        registry,
        db_url=db_url_of(db_target),
        twilio_account_sid=gateway.account_sid,
        twilio_auth_token=gateway.auth_token,
        twilio_from=HUB_NUMBER,
        twilio_api_base=gateway.base_url,
        twilio_timeout_s=1.0,
    )
    r.clock = clock
    yield r
    await r.stop()


@pytest.fixture
async def hub(runner):
    return await runner.start()


@pytest.fixture
def panels(mosquitto, tmp_path, registry):
    from devices.panel import ReferencePanel

    made = []

    def make(*panel_ids):
        for panel_id in panel_ids:
            place = registry.panel_place(panel_id)
            p = ReferencePanel(
                panel_id,
                mosquitto.host,
                mosquitto.port,
                state_dir=tmp_path / "panels",
                username=panel_id,
                household_id=place.household.id,
                unit_id=place.unit.id,
                retry_initial_s=0.5,
            )
            p.start()
            made.append(p)
        return made[-len(panel_ids) :]

    yield make
    for p in made:
        p.stop()


async def raise_alarm(hub, panel, kind="burglary") -> str:
    receipt = await asyncio.to_thread(panel.raise_alarm(kind).wait, 5)
    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    await first_step_recorded(hub, receipt.alarm_id)
    return receipt.alarm_id


async def sms_to(gateway, phone, count=1, timeout=15.0):
    """Every SMS the gateway holds for `phone`, once it holds `count`; fails after `timeout`."""
    return await asyncio.to_thread(
        functools.partial(gateway.store.wait_for_messages, count, phone, timeout, strict=True)
    )


async def calls_to(gateway, phone, count=1, timeout=15.0):
    """Every call the gateway holds for `phone`, once it holds `count`; fails after `timeout`."""
    return await asyncio.to_thread(
        functools.partial(gateway.store.wait_for_calls, count, phone, timeout, strict=True)
    )


async def later(hub, clock, seconds):
    clock.advance(seconds)
    await hub.engine.run_once()
    await hub.sender.run_once()


def until(predicate, timeout=5.0):
    # Some predicates here move the hub's clock on (`later`): asked every 50 ms, as they
    # were written for.
    return _until(predicate, timeout, every=0.05)


def alarm_of(body: str) -> str:
    """The alarm id an SMS names."""
    return re.search(r"Alarm (a-\w+)\.", body).group(1)


def reply_code(body: str) -> str:
    return re.search(r"Reply (\d+) to acknowledge", body).group(1)


async def test_the_patrol_replies_with_its_code_and_the_police_step_is_skipped(
    hub, clock, gateway, panels
):
    (raiser,) = panels("p-0001-02")
    alarm_id = await raise_alarm(hub, raiser)

    (to_patrol,) = await sms_to(gateway, PATROL_1)
    (to_key,) = await sms_to(gateway, KEY_HOUSEHOLD)
    assert "BURGLARY" in to_patrol.body and "2栋, 1单元102室" in to_patrol.body
    assert to_patrol.from_ == HUB_NUMBER
    assert "Reply 1 to acknowledge" in to_key.body
    assert gateway.messages(DESK) == [], "the desk is not told before its step"

    answer = await gateway.reply_async(
        PATROL_1, reply_code(to_patrol.body), f"{hub.public_url}/twilio/sms"
    )
    assert answer.status_code == 200 and "acknowledged the alarm at" in answer.text
    assert (await hub.alarms.get(alarm_id)).state == "acknowledged"
    acked = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "acknowledged"]
    assert (acked[0].actor, acked[0].channel, acked[0].detail["role"]) == (
        f"phone:{PATROL_1}",
        "sms",
        "patrol",
    )

    await later(hub, clock, 61)
    await asyncio.sleep(0.3)
    assert gateway.messages(DESK) == [] and gateway.calls(DESK) == []
    skipped = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "step_skipped"]
    assert skipped[0].detail["reason"] == "acknowledged by patrol"


async def test_nobody_answers_and_the_desk_gets_an_sms_and_a_call_it_can_answer(
    hub, clock, gateway, panels
):
    (raiser,) = panels("p-0001-03")
    alarm_id = await raise_alarm(hub, raiser)
    await sms_to(gateway, PATROL_1)

    await later(hub, clock, 61)
    (to_desk,) = await sms_to(gateway, DESK)
    (call,) = await calls_to(gateway, DESK)
    assert "Escalation: police" in to_desk.body
    assert "<Gather" in call.twiml and "Press 1 to acknowledge" in call.twiml

    pressed = await gateway.press_async(call.sid, "1")
    assert pressed.status_code == 200 and "Acknowledged" in pressed.text
    alarm = await hub.alarms.get(alarm_id)
    assert alarm.state == "acknowledged"
    acked = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "acknowledged"]
    assert (acked[0].channel, acked[0].detail["role"]) == ("voice", "police")


async def test_delivery_reports_come_back_and_a_failure_shows_on_the_timeline(
    hub, clock, gateway, panels
):
    gateway.fail_delivery(PATROL_2)
    (raiser,) = panels("p-0001-04")
    alarm_id = await raise_alarm(hub, raiser)

    async def reported():
        notes = await hub.outbox.for_alarm(alarm_id)
        by_phone = {n["recipient"]: n["delivery"] for n in notes if n["channel"] == "sms"}
        return by_phone.get(PATROL_1) == "delivered" and by_phone.get(PATROL_2) == "undelivered"

    await until(reported)
    failed = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "notification_failed"]
    assert [(e.detail["recipient"], e.detail["error_code"]) for e in failed] == [
        (PATROL_2, "30003")
    ]


async def test_a_forged_reply_is_refused_and_changes_nothing(hub, gateway, panels):
    (raiser,) = panels("p-0001-05")
    alarm_id = await raise_alarm(hub, raiser)
    (to_patrol,) = await sms_to(gateway, PATROL_1)
    form = {
        "From": PATROL_1,
        "To": HUB_NUMBER,
        "Body": reply_code(to_patrol.body),
        "MessageSid": "SM" + "0" * 32,
        "AccountSid": gateway.account_sid,
    }
    async with httpx.AsyncClient() as client:
        unsigned = await client.post(f"{hub.public_url}/twilio/sms", data=form)
        forged = await client.post(
            f"{hub.public_url}/twilio/sms",
            data=form,
            headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        )
    assert unsigned.status_code == 403 and forged.status_code == 403
    assert (await hub.alarms.get(alarm_id)).state == "raised"


async def test_unknown_numbers_and_unknown_codes_get_a_clear_answer(hub, gateway, panels):
    (raiser,) = panels("p-0001-06")
    alarm_id = await raise_alarm(hub, raiser)
    await sms_to(gateway, PATROL_1)
    url = f"{hub.public_url}/twilio/sms"

    stranger = await gateway.reply_async("+15557770000", "1", url)
    assert "not registered" in stranger.text
    wrong_code = await gateway.reply_async(PATROL_1, "42", url)
    assert "no alarm 42" in wrong_code.text
    gibberish = await gateway.reply_async(PATROL_1, "who is this?", url)
    assert "Not understood" in gibberish.text
    assert (await hub.alarms.get(alarm_id)).state == "raised"

    bare = await gateway.reply_async(PATROL_1, "ACK", url)
    assert "acknowledged the alarm" in bare.text
    assert (await hub.alarms.get(alarm_id)).state == "acknowledged"


async def test_a_gateway_error_is_retried_until_delivered(hub, clock, gateway, panels):
    gateway.fail_next(1, 500)
    (raiser,) = panels("p-0001-07")
    alarm_id = await raise_alarm(hub, raiser)

    async def all_sent():
        await later(hub, clock, 1)
        sms = [n for n in await hub.outbox.for_alarm(alarm_id) if n["channel"] == "sms"]
        return bool(sms) and all(n["status"] == "sent" for n in sms)

    await until(all_sent)
    notes = await hub.outbox.for_alarm(alarm_id)
    assert sorted(n["attempts"] for n in notes if n["channel"] == "sms")[-1] == 2
    for n in notes:
        if n["channel"] == "sms":
            assert len(gateway.messages(n["recipient"])) == 1, "delivered once"


async def test_a_send_whose_answer_never_came_is_marked_unknown_not_sent_twice(
    hub, clock, gateway, panels
):
    gateway.hang_next(1, 3)
    (raiser,) = panels("p-0001-08")
    alarm_id = await raise_alarm(hub, raiser)

    async def settled():
        # The first step's SMS are queued just after the receipt, by the engine.
        sms = [n for n in await hub.outbox.for_alarm(alarm_id) if n["channel"] == "sms"]
        return bool(sms) and all(n["status"] in ("sent", "unknown") for n in sms)

    await until(settled, timeout=10)
    notes = await hub.outbox.for_alarm(alarm_id)
    (unknown,) = [n for n in notes if n["status"] == "unknown"]
    assert "outcome unknown" in unknown["last_error"]
    await later(hub, clock, 120)  # long past any retry
    assert len(gateway.messages(unknown["recipient"])) == 1, "kept once, never resent"
    notes = {n["id"]: n["status"] for n in await hub.outbox.for_alarm(alarm_id)}
    assert notes[unknown["id"]] == "unknown"


async def test_a_patrol_hears_of_a_second_alarm_while_the_first_ones_sms_waits_to_retry(
    hub, clock, gateway, panels
):
    # Two units of one zone: one patrol. The gateway is down while the first alarm's SMS go.
    first_raiser, second_raiser = panels("p-0001-07", "p-0002-04")
    gateway.fail_next(100, 500)
    first = await raise_alarm(hub, first_raiser)

    async def first_waits_to_retry():
        sms = [n for n in await hub.outbox.for_alarm(first) if n["channel"] == "sms"]
        return bool(sms) and all(n["status"] == "queued" and n["attempts"] == 1 for n in sms)

    await until(first_waits_to_retry)
    gateway.reset_faults()
    second = await raise_alarm(hub, second_raiser)
    # The hub's clock stands still: the first alarm's retries are not due yet.
    (told,) = await sms_to(gateway, PATROL_1)
    assert second in told.body, "the second alarm does not wait behind the first one's retry"
    await later(hub, clock, 2)
    told = await sms_to(gateway, PATROL_1, 2)
    assert first in told[1].body


async def test_one_panel_pressing_again_and_again_is_one_alarm_and_one_round_of_sms(
    hub, gateway, panels
):
    (raiser,) = panels("p-0002-03")
    ids = {await raise_alarm(hub, raiser, "panic") for _ in range(10)}
    assert len(ids) == 1
    (alarm_id,) = ids
    await sms_to(gateway, PATROL_1)
    await asyncio.sleep(0.5)
    assert len(gateway.messages(PATROL_1)) == 1
    repeats = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "repeated"]
    assert len(repeats) == 9


async def test_the_rate_limit_holds_back_the_sixth_sms_and_says_so(hub, clock, gateway, panels):
    raisers = panels(*[f"p-0002-{i:02d}" for i in range(1, 7)])
    alarms = [await raise_alarm(hub, p) for p in raisers]
    first_five = await sms_to(gateway, PATROL_1, 5)

    async def held():
        timeline = await hub.alarms.timeline(alarms[5])
        return [e for e in timeline if e.entry == "notification_held"]

    async def both_patrols_held():
        return {e.detail["recipient"] for e in await held()} >= {PATROL_1, PATROL_2}

    await until(both_patrols_held, timeout=15)
    assert "rate limit" in (await held())[0].detail["reason"]
    # A quiet moment: nothing more reaches the patrol phone while the limit holds.
    await asyncio.sleep(0.5)
    assert len(gateway.messages(PATROL_1)) == 5, "five in 15 minutes, no more"
    assert {alarm_of(m.body) for m in first_five} == set(alarms[:5])

    await later(hub, clock, 15 * 60 + 1)
    told = await sms_to(gateway, PATROL_1, 6)
    assert alarm_of(told[5].body) == alarms[5], "the held sixth goes out once the window passes"


async def test_web_push_reaches_a_subscribed_patrol_phone_whose_action_acknowledges(
    hub, clock, gateway, push_service, panels
):
    browser = push_service.new_subscription()
    await hub.contacts.add_subscription(
        PATROL_1, browser.endpoint, browser.p256dh, browser.auth, clock.now_ms()
    )
    (raiser,) = panels("p-0002-08")  # zone z-qiaokou: patrol t-qiaokou-1
    alarm_id = await raise_alarm(hub, raiser)

    (push,) = await asyncio.to_thread(push_service.wait_for, 1, browser.token, 5.0)
    assert push.json["tag"] == alarm_id and "BURGLARY" in push.json["body"]
    assert push.vapid_sub.startswith("mailto:")
    async with httpx.AsyncClient() as client:
        answer = await client.post(push.json["ack_url"], headers={"Accept": "application/json"})
    assert answer.json() == {"ok": True, "alarm_id": alarm_id, "error": None}
    acked = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "acknowledged"]
    assert (acked[0].channel, acked[0].detail["role"]) == ("push", "patrol")


async def test_a_subscription_the_browser_dropped_is_forgotten(
    hub, clock, gateway, push_service, panels
):
    browser = push_service.new_subscription()
    sub_id = await hub.contacts.add_subscription(
        PATROL_1, browser.endpoint, browser.p256dh, browser.auth, clock.now_ms()
    )
    push_service.expire(browser.token)
    (raiser,) = panels("p-0002-09")
    alarm_id = await raise_alarm(hub, raiser)

    async def forgotten():
        return await hub.contacts.subscription(sub_id) is None

    async def push_statuses():
        return [n["status"] for n in await hub.outbox.for_alarm(alarm_id) if n["channel"] == "push"]

    async def push_settled():
        return "sending" not in await push_statuses()

    await until(forgotten)
    # The subscription goes during the send; the message is marked failed right after it.
    await until(push_settled)
    assert await push_statuses() == ["failed"]


async def test_the_payloads_say_how_to_answer(hub, gateway, panels):
    (raiser,) = panels("p-0001-09")
    alarm_id = await raise_alarm(hub, raiser)
    notes = await hub.outbox.for_alarm(alarm_id)
    sms = [
        (n["recipient"], json.loads(n["payload"])["text"]) for n in notes if n["channel"] == "sms"
    ]
    # The first alert: every phone of the unit but the raising household's (h-09), the
    # other unit's key household (u-0002/h-03) and the zone's two patrol phones.
    neighbours = [f"+155500001{h:02d}" for h in (1, 2, 3, 4, 5, 6, 7, 8, 10)] + ["+15550000155"]
    assert sorted(to for to, _ in sms) == sorted([*neighbours, "+15550000203", PATROL_1, PATROL_2])
    unanswerable = [
        (to, text) for to, text in sms if not re.search(r"Reply \d+ to acknowledge\.$", text)
    ]
    assert unanswerable == [], "every SMS says how to answer"


async def first_delivered(hub, alarm_id) -> dict:
    """The first of an alarm's notifications the provider reported delivered (waits for it)."""

    async def delivered():
        notes = await hub.outbox.for_alarm(alarm_id)
        return any(n["delivery"] == "delivered" for n in notes)

    await until(delivered)
    return next(n for n in await hub.outbox.for_alarm(alarm_id) if n["delivery"] == "delivered")


async def delivered_sms(hub, panels, panel_id) -> tuple[str, dict, str]:
    """An alarm from this panel, its first delivered notification, and the status URL."""
    (raiser,) = panels(panel_id)
    alarm_id = await raise_alarm(hub, raiser)
    return alarm_id, await first_delivered(hub, alarm_id), f"{hub.public_url}/twilio/status"


async def chunks(*parts: bytes):
    """A request body sent piece by piece, with no Content-Length."""
    for part in parts:
        yield part


def twilio_signature(auth_token: str, url: str, form: dict) -> str:
    from twilio.request_validator import RequestValidator

    return RequestValidator(auth_token).compute_signature(url, form)


async def test_a_late_status_never_moves_a_delivery_backwards(hub, gateway, panels):
    alarm_id, note, url = await delivered_sms(hub, panels, "p-0001-10")
    late = {
        "MessageSid": note["provider_id"],
        "MessageStatus": "sent",
        "AccountSid": gateway.account_sid,
    }
    signature = twilio_signature(gateway.auth_token, url, late)
    async with httpx.AsyncClient() as client:
        answer = await client.post(url, data=late, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 204
    again = {n["id"]: n["delivery"] for n in await hub.outbox.for_alarm(alarm_id)}
    assert again[note["id"]] == "delivered"


async def test_a_forged_delivery_report_is_refused(hub, gateway, panels):
    alarm_id, note, url = await delivered_sms(hub, panels, "p-0001-09")
    report = {
        "MessageSid": note["provider_id"],
        "MessageStatus": "undelivered",
        "ErrorCode": "30003",
        "AccountSid": gateway.account_sid,
    }
    wrong_key = twilio_signature("not-the-auth-token", url, report)
    right_key = twilio_signature(gateway.auth_token, url, report)
    async with httpx.AsyncClient() as client:
        unsigned = await client.post(url, data=report)
        forged = await client.post(url, data=report, headers={"X-Twilio-Signature": wrong_key})
        huge = await client.post(
            url, data={**report, "Body": "x" * 100_000}, headers={"X-Twilio-Signature": right_key}
        )
        # Sent in chunks, without a length: cut off all the same.
        streamed = await client.post(
            url,
            content=chunks(b"Body=", *[b"x" * 10_000] * 10),
            headers={"X-Twilio-Signature": right_key, "Content-Type": FORM},
        )
        as_json = await client.post(url, json=report, headers={"X-Twilio-Signature": right_key})
        signed = await client.post(url, data=report, headers={"X-Twilio-Signature": right_key})

    assert (unsigned.status_code, forged.status_code) == (403, 403)
    assert (huge.status_code, streamed.status_code, as_json.status_code) == (413, 413, 415)
    assert signed.status_code == 204
    # Delivered stays delivered: a report never moves a message backwards or sideways.
    again = {n["id"]: n["delivery"] for n in await hub.outbox.for_alarm(alarm_id)}
    assert again[note["id"]] == "delivered"
    timeline = await hub.alarms.timeline(alarm_id)
    assert not any(e.entry == "notification_failed" for e in timeline)


async def test_a_report_signed_for_the_url_without_its_port_is_taken_too(hub, gateway, panels):
    _, note, url = await delivered_sms(hub, panels, "p-0001-08")
    report = {
        "MessageSid": note["provider_id"],
        "MessageStatus": "delivered",
        "AccountSid": gateway.account_sid,
    }
    portless = urlsplit(url)._replace(netloc=urlsplit(url).hostname).geturl()
    elsewhere = url.replace("/twilio/status", "/twilio/sms")
    async with httpx.AsyncClient() as client:
        without_port = await client.post(
            url,
            data=report,
            headers={"X-Twilio-Signature": twilio_signature(gateway.auth_token, portless, report)},
        )
        for_another_path = await client.post(
            url,
            data=report,
            headers={"X-Twilio-Signature": twilio_signature(gateway.auth_token, elsewhere, report)},
        )

    assert (without_port.status_code, for_another_path.status_code) == (204, 403)


async def test_the_hubs_signature_is_twilios_signature():
    forms = [
        {},
        {"MessageSid": "SM1", "MessageStatus": "delivered", "AccountSid": "AC1"},
        {"B": "2", "a": "1", "A": "", "AB": "x", "Body": "收到 ack 12 & =?"},
        {"Digits": "1", "Caller": "+8613800000000", "Emoji": "🚨"},
    ]
    for url in ("http://hub.example:8080/twilio/status", "https://hub.example/t?x=1&y=2"):
        for form in forms:
            assert signature_of("tok", url, form).decode() == twilio_signature("tok", url, form)


async def test_a_hub_stopped_with_sms_on_their_way_waits_for_their_answers(
    runner, hub, gateway, panels
):
    gateway.hang_next(50, 0.5)  # each SMS reaches the gateway; its answer comes 0.5 s later
    (raiser,) = panels("p-0001-04")
    alarm_id = await raise_alarm(hub, raiser)
    queued = [n for n in await hub.outbox.for_alarm(alarm_id) if n["channel"] == "sms"]
    assert queued
    await asyncio.to_thread(
        functools.partial(gateway.store.wait_for_messages, len(queued), None, 15, strict=True)
    )

    await runner.stop()  # with every answer still on its way
    hub = await runner.start()

    sms = [n for n in await hub.outbox.for_alarm(alarm_id) if n["channel"] == "sms"]
    # Sent, not "unknown": a stop never leaves a send it could have finished in doubt.
    assert [n["status"] for n in sms] == ["sent"] * len(queued)
    assert len(gateway.messages()) == len(queued)
