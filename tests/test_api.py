"""The HTTP API as desks, patrols and admins use it, over the ASGI app of a running hub:
every zone-isolation rule, every CSRF rule, and every action on the timeline with its user.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from contextlib import aclosing

import httpx
import pytest

from devices.topics import event_topic
from hub.passwords import hash_password
from tests.conftest import first_step_recorded
from tests.waiting import until

pytestmark = pytest.mark.asyncio

PASSWORD = "correct horse battery"
PATROL_PHONE = "+15550009001"


@pytest.fixture
async def hub(mosquitto, tmp_path, registry, db_target):
    from tests.conftest import HubRunner, db_url_of

    runner = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        registry,
        db_url=db_url_of(db_target),
    )
    hub = await runner.start()
    pw = await asyncio.to_thread(hash_password, PASSWORD)
    now = hub.clock.now_ms()
    for name, role, zones, phone in [
        ("admin", "admin", (), None),
        ("desk-q", "police", ("z-qiaokou",), "+15550009911"),
        ("patrol-q", "patrol", ("z-qiaokou",), PATROL_PHONE),
        ("patrol-j", "patrol", ("z-jianghan",), "+15550009101"),
    ]:
        await hub.accounts.add_user(name, pw, role, zones, phone, now)
    yield hub
    await runner.stop()


def client_for(hub, *, over_http: bool = False) -> httpx.AsyncClient:
    """A client of the ASGI app; `over_http` goes through the hub's real HTTP server (the
    ASGI transport buffers whole responses, so a live stream needs the real thing)."""
    if over_http:
        return httpx.AsyncClient(base_url=hub.public_url)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.web), base_url=hub.public_url)


async def login(hub, username: str, *, over_http: bool = False) -> tuple[httpx.AsyncClient, str]:
    """A browser-like client logged in as `username`, and its CSRF token."""
    client = client_for(hub, over_http=over_http)
    form = await client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    done = await client.post(
        "/login", data={"username": username, "password": PASSWORD, "csrf_token": csrf}
    )
    assert done.status_code == 303, done.text
    me = await client.get("/api/me")
    return client, me.json()["csrf_token"]


SEQS = itertools.count(1)


async def raise_alarm(hub, panel_id: str, kind: str = "burglary") -> str:
    """A panel's alarm event, handed to the hub's ingest as the broker would hand it."""
    seq = next(SEQS)
    event = {"type": "alarm", "seq": seq, "ts": hub.clock.now_ms(), "kind": kind}
    hub.ingest.on_message(event_topic(panel_id), json.dumps(event).encode())
    place = hub.registry.panel_place(panel_id)
    async with asyncio.timeout(20):
        while True:
            for alarm in await hub.alarms.search(unit_ids=[place.unit.id]):
                if alarm.panel_id == panel_id and alarm.seq == seq:
                    await first_step_recorded(hub, alarm.id)
                    return alarm.id
            await asyncio.sleep(0.02)


async def test_a_desk_sees_and_acts_only_in_its_zones(hub):
    mine = await raise_alarm(hub, "p-0001-02")
    theirs = await raise_alarm(hub, "p-0003-02")
    desk, csrf = await login(hub, "desk-q")
    async with aclosing(desk):
        listed = (await desk.get("/api/alarms", params={"state": "open"})).json()
        assert [a["id"] for a in listed] == [mine]
        assert listed[0]["zone"] == "z-qiaokou" and listed[0]["address"] == "1单元102室"
        assert (await desk.get(f"/api/alarms/{theirs}")).status_code == 404
        for action in ("acknowledge", "on_scene", "escalate", "false_alarm"):
            refused = await desk.post(
                f"/api/alarms/{theirs}/{action}", headers={"X-CSRF-Token": csrf}
            )
            assert refused.status_code == 404, action
        resolve = await desk.post(
            f"/api/alarms/{theirs}/resolve", json={"note": "x"}, headers={"X-CSRF-Token": csrf}
        )
        assert resolve.status_code == 404
        assert (await desk.get("/api/alarms", params={"zone": "z-jianghan"})).json() == []
        assert (await desk.get("/api/alarms", params={"unit": "u-0003"})).json() == []
        units = {u["id"] for u in (await desk.get("/api/units")).json()}
        assert units == {"u-0001", "u-0002"}
        panels = {p["zone"] for p in (await desk.get("/api/panels")).json()}
        assert panels == {"z-qiaokou"}
        households = (await desk.get("/api/households")).json()
        assert len(households) == 20 and all("pin" not in h for h in households)
        assert {p["zone"] for p in (await desk.get("/api/patrols")).json()} == {"z-qiaokou"}
        assert [d["id"] for d in (await desk.get("/api/desks")).json()["police_desks"]] == [
            "d-qiaokou"
        ]
    assert (await hub.alarms.get(theirs)).state == "raised", "nothing changed over there"
    assert [e.entry for e in await hub.alarms.timeline(theirs)] == ["raised", "step_fired"]

    other, _ = await login(hub, "patrol-j")
    async with aclosing(other):
        assert [a["id"] for a in (await other.get("/api/alarms")).json()] == [theirs]
        assert (await other.get(f"/api/alarms/{mine}")).status_code == 404
    admin, _ = await login(hub, "admin")
    async with aclosing(admin):
        assert {a["id"] for a in (await admin.get("/api/alarms")).json()} == {mine, theirs}


async def test_open_alarms_come_most_urgent_first(hub):
    older = await raise_alarm(hub, "p-0001-02")
    taken = await raise_alarm(hub, "p-0001-03")
    newer = await raise_alarm(hub, "p-0001-04", "fire")
    desk, csrf = await login(hub, "desk-q")
    async with aclosing(desk):
        await desk.post(f"/api/alarms/{taken}/acknowledge", headers={"X-CSRF-Token": csrf})
        listed = (await desk.get("/api/alarms", params={"state": "open"})).json()
    assert [a["id"] for a in listed] == [older, newer, taken]
    assert listed[2]["answered_by"][0]["actor"] == "user:desk-q"
    assert listed[0]["next_step_name"] == "police" and listed[0]["next_step_at"] > 0
    assert listed[0]["notified"] > 0


async def test_every_action_is_on_the_timeline_with_the_user(hub):
    alarm_id = await raise_alarm(hub, "p-0002-05")
    desk, csrf = await login(hub, "desk-q")
    headers = {"X-CSRF-Token": csrf}
    async with aclosing(desk):
        escalated = await desk.post(f"/api/alarms/{alarm_id}/escalate", headers=headers)
        assert escalated.status_code == 200
        police = [e for e in escalated.json()["timeline"] if e["entry"] == "step_fired"][-1]
        assert police["detail"]["name"] == "police" and police["detail"]["forced"] == "escalated"
        await desk.post(f"/api/alarms/{alarm_id}/acknowledge", headers=headers)
        await desk.post(f"/api/alarms/{alarm_id}/on_scene", headers=headers)
        no_note = await desk.post(f"/api/alarms/{alarm_id}/resolve", json={}, headers=headers)
        assert no_note.status_code == 422
        done = await desk.post(
            f"/api/alarms/{alarm_id}/resolve", json={"note": "window was open"}, headers=headers
        )
        assert done.json()["state"] == "resolved"
        again = await desk.post(f"/api/alarms/{alarm_id}/acknowledge", headers=headers)
        assert again.status_code == 409 and "already resolved" in again.json()["detail"]
    timeline = await hub.alarms.timeline(alarm_id)
    by_user = [(e.entry, e.actor, e.channel) for e in timeline if e.actor == "user:desk-q"]
    assert by_user == [
        ("escalated", "user:desk-q", "web"),
        ("acknowledged", "user:desk-q", "web"),
        ("on_scene", "user:desk-q", "web"),
        ("resolved", "user:desk-q", "web"),
    ]
    resolved = next(e for e in timeline if e.entry == "resolved")
    assert resolved.detail["note"] == "window was open" and resolved.detail["role"] == "police"


async def test_a_false_alarm_is_resolved_as_such(hub):
    alarm_id = await raise_alarm(hub, "p-0001-06")
    patrol, csrf = await login(hub, "patrol-q")
    async with aclosing(patrol):
        answer = await patrol.post(
            f"/api/alarms/{alarm_id}/false_alarm",
            json={"note": "cat on the sensor"},
            headers={"X-CSRF-Token": csrf},
        )
    assert answer.json()["state"] == "resolved"
    resolved = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "resolved"]
    assert resolved[0].detail == {
        "role": "patrol",
        "note": "cat on the sensor",
        "outcome": "false_alarm",
    }


async def test_csrf_rules_for_sessions_and_none_for_api_tokens(hub):
    alarm_id = await raise_alarm(hub, "p-0001-07")
    desk, csrf = await login(hub, "desk-q")
    url = f"/api/alarms/{alarm_id}/acknowledge"
    async with aclosing(desk):
        assert (await desk.post(url)).status_code == 403
        assert (await desk.post(url, headers={"X-CSRF-Token": "guess"})).status_code == 403
        cross_site = await desk.post(
            url, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        )
        assert cross_site.status_code == 403
        assert (await hub.alarms.get(alarm_id)).state == "raised"
        assert (await desk.post(url, headers={"X-CSRF-Token": csrf})).status_code == 200

    user = (await hub.accounts.find_user("desk-q"))[0]
    token = await hub.accounts.new_api_token(user.id, "integration", hub.clock.now_ms())
    other = await raise_alarm(hub, "p-0001-08")
    async with client_for(hub) as integration:
        answer = await integration.post(
            f"/api/alarms/{other}/acknowledge", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 200


async def test_nothing_without_logging_in(hub):
    alarm_id = await raise_alarm(hub, "p-0001-09")
    async with client_for(hub) as anonymous:
        for path in (
            "/api/alarms",
            f"/api/alarms/{alarm_id}",
            "/api/units",
            "/api/panels",
            "/api/me",
            "/api/registry",
            "/api/users",
        ):
            assert (await anonymous.get(path)).status_code == 401, path
        assert (await anonymous.post(f"/api/alarms/{alarm_id}/acknowledge")).status_code == 401


async def test_only_admins_change_the_registry_and_accounts(hub):
    patrol, csrf = await login(hub, "patrol-q")
    async with aclosing(patrol):
        assert (await patrol.get("/api/registry")).status_code == 403
        put = await patrol.put("/api/registry", content="units: []", headers={"X-CSRF-Token": csrf})
        assert put.status_code == 403
        assert (await patrol.get("/api/users")).status_code == 403


async def test_registry_import_shows_the_same_problems_as_check_config(hub, tmp_path):
    admin, csrf = await login(hub, "admin")
    headers = {"X-CSRF-Token": csrf}
    async with aclosing(admin):
        exported = await admin.get("/api/registry")
        assert exported.status_code == 200 and "u-0001" in exported.text
        broken = exported.text.replace("address:", "adress:", 1)
        refused = await admin.put("/api/registry", content=broken, headers=headers)
        assert refused.status_code == 422
        problems = refused.json()["problems"]
        assert any(
            re.match(r"registry\.yaml:\d+:\d+: error: .*unknown key 'adress'", p) for p in problems
        ), problems
        assert hub.registry.counts()["units"] == 3, "unchanged"

        fewer = (
            exported.text.split("- id: u-0003")[0].rstrip()
            + "\n"
            + exported.text[exported.text.index("patrols:") :]
        )
        accepted = await admin.put("/api/registry", content=fewer, headers=headers)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["counts"]["units"] == 2
        assert hub.registry.unit("u-0003") is None
        assert hub.context.registry is hub.registry, "the rules use the new registry"


async def test_households_go_out_and_come_back_as_csv(hub):
    admin, csrf = await login(hub, "admin")
    headers = {"X-CSRF-Token": csrf}
    async with aclosing(admin):
        exported = (await admin.get("/api/registry/households.csv")).text
        assert exported.splitlines()[0] == (
            "unit_id,household_id,address,panel,phones,pin,duress_pin"
        )
        assert len(exported.splitlines()) == 31
        moved = exported.replace("u-0001,h-10,1单元502室", "u-0001,h-10,1单元503室")
        ok = await admin.put("/api/registry/households.csv", content=moved, headers=headers)
        assert ok.status_code == 200, ok.text
        assert hub.registry.household("u-0001", "h-10").address == "1单元503室"
        clash = moved.replace("p-0001-09", "p-0001-10")
        refused = await admin.put("/api/registry/households.csv", content=clash, headers=headers)
        assert refused.status_code == 422
        assert any("duplicate panel id 'p-0001-10'" in p for p in refused.json()["problems"])


async def test_admins_add_and_disable_accounts(hub):
    admin, csrf = await login(hub, "admin")
    headers = {"X-CSRF-Token": csrf}
    async with aclosing(admin):
        made = await admin.post(
            "/api/users",
            headers=headers,
            json={
                "username": "desk-j",
                "password": PASSWORD,
                "role": "police",
                "zones": ["z-jianghan"],
            },
        )
        assert made.status_code == 201, made.text
        unknown_zone = await admin.post(
            "/api/users",
            headers=headers,
            json={
                "username": "desk-x",
                "password": PASSWORD,
                "role": "police",
                "zones": ["z-mars"],
            },
        )
        assert unknown_zone.status_code == 400 and "z-mars" in unknown_zone.json()["detail"]
        assert (await admin.post("/api/users/patrol-j/disable", headers=headers)).status_code == 200
    names = {u.username: u.disabled for u in await hub.accounts.list_users()}
    assert names["desk-j"] is False and names["patrol-j"] is True


async def test_live_events_carry_only_the_users_zones(hub):
    desk, _ = await login(hub, "desk-q", over_http=True)
    got: list[dict] = []
    opened = asyncio.Event()

    async def listen():
        async with desk.stream("GET", "/api/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("retry:"):
                    opened.set()  # the stream's first line: the hub has subscribed it
                elif line.startswith("data: "):
                    got.append(json.loads(line[6:]))

    async with aclosing(desk):
        task = asyncio.create_task(listen())
        await until(
            lambda: opened.is_set() or task.done(),
            timeout=20,
            message="the live stream's first line",
        )
        if task.done():
            task.result()  # its error, if it failed
            pytest.fail("the live stream ended before it was open")
        theirs = await raise_alarm(hub, "p-0003-05")
        mine = await raise_alarm(hub, "p-0001-05")
        await until(
            lambda: any(e["id"] == mine for e in got),
            timeout=20,
            message="the desk's own zone's alarm on its live stream",
        )
        task.cancel()
    assert all(e["id"] != theirs for e in got)
    assert {"id": mine, "state": "raised", "zone": "z-qiaokou"}.items() <= got[0].items()


async def test_live_streams_end_when_the_hub_stops_and_new_ones_end_at_once(hub):
    desk, _ = await login(hub, "desk-q", over_http=True)
    async with aclosing(desk):
        async with desk.stream("GET", "/api/events") as open_stream:
            lines = open_stream.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            hub.events.close()  # as the hub does when it stops
            async with asyncio.timeout(10):  # not at the next keepalive, 15 s on
                assert [line async for line in lines if line.strip()] == []
        async with asyncio.timeout(10):
            late = await desk.get("/api/events")  # a browser reconnecting meanwhile
        assert late.status_code == 200 and late.text.startswith("retry:")
        assert "event:" not in late.text


async def test_a_user_with_a_phone_subscribes_this_browser_to_pushes(hub):
    browser = {
        "endpoint": "http://127.0.0.1:9/push/abc",
        "keys": {"p256dh": "B" + "x" * 86, "auth": "a" * 22},
    }
    patrol, csrf = await login(hub, "patrol-q")
    async with aclosing(patrol):
        key = await patrol.get("/api/push/key")
        assert key.status_code == 200 and len(key.json()["public_key"]) > 80
        made = await patrol.post(
            "/api/push/subscriptions", json=browser, headers={"X-CSRF-Token": csrf}
        )
        assert made.status_code == 201
    stored = await hub.contacts.subscription(made.json()["id"])
    assert stored.phone == PATROL_PHONE

    admin, csrf = await login(hub, "admin")
    async with aclosing(admin):
        no_phone = await admin.post(
            "/api/push/subscriptions", json=browser, headers={"X-CSRF-Token": csrf}
        )
    assert no_phone.status_code == 422
