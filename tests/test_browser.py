"""The desk, the patrol's phone and the web app, as people live them in a real browser.

A real hub (in a thread of its own) on a real Mosquitto, reference panels raising the
alarms, and Chromium driven by Playwright from the test's thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator

import pytest
from playwright import sync_api

from hub.alarms.work import Responder
from hub.passwords import hash_password
from tests.brokers import Mosquitto
from tests.hub_thread import HubInThread

expect = sync_api.expect

# Playwright drives the system's Chromium: no browser download.
CHROMIUM = (
    os.environ.get("TENHUB_TEST_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery"
USERS = {
    # username: (role, zones)
    "desk-qiaokou": ("police", ["z-qiaokou"]),
    "desk-city": ("police", ["z-qiaokou", "z-jianghan"]),
    "patrol-qiaokou": ("patrol", ["z-qiaokou"]),
    "patrol-jianghan": ("patrol", ["z-jianghan"]),
    "patrol-qiaokou-night-team": ("patrol", ["z-qiaokou"]),
    "admin": ("admin", []),
}
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
# How long the browser waits for what a story expects before it fails: generous, for a
# busy machine; what should never come still fails, only later.
WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)

if CHROMIUM is None:  # fail loudly: a browser story that silently skips proves nothing
    raise RuntimeError("Chromium is needed (apt-get install chromium) or TENHUB_TEST_CHROMIUM")


# --- the world: broker, hub, panels, browser ---------------------------------------------


@pytest.fixture(scope="module")
def mosquitto_broker(tmp_path_factory) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="module")
def running(mosquitto_broker, tmp_path_factory, registry, module_db_url) -> Iterator[HubInThread]:
    url = mosquitto_broker.url.replace("mqtt://", "mqtt://tenhub-hub@")
    runner = HubInThread(
        url, tmp_path_factory.mktemp("hub") / "hub.db", registry, db_url=module_db_url
    )
    hub = runner.start()
    password_hash = hash_password(PASSWORD)
    for username, (role, zones) in USERS.items():
        runner.call(hub.accounts.add_user(username, password_hash, role, zones, None, 0))
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def fleet(mosquitto_broker, tmp_path_factory, registry) -> Iterator[dict]:
    """Every panel of the registry, online."""
    from devices.panel import ReferencePanel

    state_dir = tmp_path_factory.mktemp("panels")
    panels = {}
    for unit in registry.units:
        for household in unit.households:
            panel = ReferencePanel(
                household.panel,
                mosquitto_broker.host,
                mosquitto_broker.port,
                state_dir=state_dir,
                username=household.panel,
                household_id=household.id,
                unit_id=unit.id,
                retry_initial_s=0.5,
                battery=90,
            )
            panel.start()
            panels[household.panel] = panel
    yield panels
    for panel in panels.values():
        panel.stop()


@pytest.fixture(autouse=True)
def no_alarm_left_open(running) -> Iterator[None]:
    """Each story starts with nothing open: it resolves what it raised."""
    yield
    hub = running.hub
    for alarm in running.call(hub.alarms.search(states=("raised", "acknowledged", "on_scene"))):
        running.call(hub.actions.resolve(alarm.id, Responder("user:test", "police"), "web", "done"))


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


class Opener:
    """Opens pages as users; `refused`: what those pages asked for and did not get (an
    answer of 400 or more), and the errors their consoles showed."""

    def __init__(self, open_page: Callable, refused: list[str]) -> None:
        self.open_page = open_page
        self.refused = refused

    def __call__(self, username: str, path: str, *, phone: bool = False):
        return self.open_page(username, path, phone=phone)


@pytest.fixture
def open_as(browser, running) -> Iterator[Opener]:
    """`open_as(username, path, phone=False)` logs in a new browser context and opens a page."""
    base = running.hub.public_url
    contexts = []
    troubles: list[str] = []  # script errors, and what the Content-Security-Policy stopped
    refused: list[str] = []

    def open_page(username: str, path: str, *, phone: bool = False):
        size = PHONE if phone else DESKTOP
        context = browser.new_context(
            base_url=base, viewport=size, is_mobile=phone, has_touch=phone
        )
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        context.on("response", lambda r: r.status >= 400 and refused.append(f"{r.status} {r.url}"))
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and refused.append(f"{path}: {m.text}"))
        page.on("pageerror", lambda error: troubles.append(f"{path}: {error}"))
        page.on("console", lambda m: "Security Policy" in m.text and troubles.append(m.text))
        page.goto(path)
        expect(page).to_have_url(re.compile(r"/login\?next="))
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(base + path)
        return page

    yield Opener(open_page, refused)
    for context in contexts:
        context.close()
    assert not troubles


def raise_alarm(panel, kind: str) -> str:
    receipt = panel.raise_alarm(kind).wait(20)
    assert receipt is not None and receipt.status == "accepted", receipt
    return receipt.alarm_id


def live_and_loaded(page, list_selector: str) -> None:
    """The page has drawn its first list and listens to the hub's events."""
    expect(page.locator(f"{list_selector}[data-loaded]")).to_have_count(1)
    expect(page.get_by_test_id("live")).to_have_attribute("data-state", "live")


# --- the stories -------------------------------------------------------------------------


def test_the_desk_sees_a_new_alarm_at_once_and_the_patrol_sees_it_taken(open_as, fleet):
    desk = open_as("desk-qiaokou", "/desk")
    patrol = open_as("patrol-qiaokou", "/patrol", phone=True)
    live_and_loaded(desk, "#alarms")
    live_and_loaded(patrol, "#patrol-alarms")

    alarm_id = raise_alarm(fleet["p-0001-01"], "burglary")

    # Live: the desk's safety-net refresh (every 30 s) would bring it only after WAIT_MS.
    row = desk.locator(f'tr[data-alarm-id="{alarm_id}"]')
    expect(row).to_be_visible()
    expect(row).to_have_class(re.compile(r"\bflash\b"))  # for 10 s from its arrival
    expect(row).to_contain_text("宝丰花园小区2栋")
    expect(row).to_contain_text("1单元101室")
    row.click()
    expect(desk).to_have_url(re.compile(f"/alarms/{alarm_id}$"))
    expect(desk.get_by_test_id("alarm-state")).to_have_text("raised")
    desk.get_by_role("button", name="Acknowledge").click()

    taken = desk.locator('[data-testid="timeline-entry"][data-entry="acknowledged"]')
    expect(taken).to_contain_text("desk-qiaokou")
    expect(desk.get_by_test_id("alarm-state")).to_have_text("acknowledged")
    card = patrol.locator(f'li[data-alarm-id="{alarm_id}"]')
    expect(card.get_by_test_id("state")).to_have_text("acknowledged")
    expect(card.locator('button[data-action="acknowledge"]')).to_be_disabled()
    expect(card.locator('button[data-action="on_scene"]')).to_be_enabled()


def test_a_patrol_of_another_zone_does_not_see_the_alarm(open_as, fleet):
    theirs = raise_alarm(fleet["p-0003-01"], "medical")
    elsewhere = raise_alarm(fleet["p-0002-01"], "fire")
    patrol = open_as("patrol-jianghan", "/patrol", phone=True)
    live_and_loaded(patrol, "#patrol-alarms")

    expect(patrol.locator(f'li[data-alarm-id="{theirs}"]')).to_be_visible()
    expect(patrol.locator(f'li[data-alarm-id="{elsewhere}"]')).to_have_count(0)
    response = patrol.goto(f"/alarms/{elsewhere}")
    assert response is not None and response.status == 404
    expect(patrol.get_by_test_id("error")).to_contain_text("No such alarm")


def test_the_countdown_to_the_next_step_ticks(open_as, fleet):
    desk = open_as("desk-qiaokou", "/desk")
    live_and_loaded(desk, "#alarms")
    alarm_id = raise_alarm(fleet["p-0001-02"], "medical")

    countdown = desk.locator(f'tr[data-alarm-id="{alarm_id}"] [data-testid="countdown"]')
    expect(countdown).to_have_text(re.compile(r"^\d+:\d\d$"))
    first = countdown.text_content()
    expect(countdown).not_to_have_text(first)  # a tick a second
    second = countdown.text_content()
    assert _seconds(second) < _seconds(first) <= 60, (first, second)


def _seconds(text: str) -> int:
    minutes, seconds = text.split(":")
    return int(minutes) * 60 + int(seconds)


def test_the_patrol_page_installs_as_an_app(open_as, browser, running):
    # The browser fetches the manifest, icons and worker without the session: no login.
    stranger = browser.new_context(base_url=running.hub.public_url)
    try:
        manifest = stranger.request.get("/manifest.webmanifest")
        assert manifest.ok
        assert manifest.headers["content-type"].startswith("application/manifest+json")
        body = json.loads(manifest.text())
        assert body["start_url"] == "/patrol" and body["display"] == "standalone"
        assert {"192x192", "512x512"} <= {icon["sizes"] for icon in body["icons"]}
        for icon in body["icons"]:
            png = stranger.request.get(icon["src"]).body()
            assert png.startswith(b"\x89PNG\r\n\x1a\n")
        worker = stranger.request.get("/sw.js")
        assert "javascript" in worker.headers["content-type"]
        assert worker.headers["service-worker-allowed"] == "/"
    finally:
        stranger.close()

    patrol = open_as("patrol-qiaokou", "/patrol", phone=True)
    manifest_link = patrol.locator('link[rel="manifest"]')
    expect(manifest_link).to_have_attribute("href", "/manifest.webmanifest")
    scope = patrol.evaluate("navigator.serviceWorker.ready.then(r => r.scope)")
    assert scope == running.hub.public_url + "/"
    expect(patrol.get_by_role("button", name="Enable notifications")).to_be_visible()


def test_a_screenshot_of_the_desk_with_two_open_alarms(open_as, fleet, running, tmp_path):
    hub = running.hub
    fleet["p-0002-10"].power_off()  # one panel drops off: its Last Will says offline
    first = raise_alarm(fleet["p-0002-05"], "fire")
    running.call(hub.actions.acknowledge(first, Responder("user:patrol-qiaokou", "patrol"), "web"))
    second = raise_alarm(fleet["p-0003-04"], "burglary")
    receipt = fleet["p-0003-04"].cancel(second, "8628").wait(20)  # the duress PIN
    assert receipt is not None and receipt.status == "accepted"

    desk = open_as("desk-city", "/desk")
    live_and_loaded(desk, "#alarms")
    rows = desk.get_by_test_id("alarm-row")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("DURESS")
    expect(desk.locator('#offline-panels [data-panel-id="p-0002-10"]')).to_be_visible()
    expect(desk.locator("#map .unit.alarm")).to_have_count(2)
    # The README's picture is the demo's, never this one.
    target = tmp_path / "desk.png"
    desk.screenshot(path=target)
    assert target.stat().st_size > 10_000


# --- small things people noticed ----------------------------------------------------------

# Draws an image the way the tab strip would, and says how big it came out (None: not an image).
DRAW_IMAGE = """src => new Promise(done => {
  const image = new Image();
  image.onload = () => done([image.naturalWidth, image.naturalHeight]);
  image.onerror = () => done(null);
  image.src = src;
})"""


def test_every_page_has_a_tab_icon_and_asks_for_nothing_missing(open_as, fleet):
    alarm_id = raise_alarm(fleet["p-0001-05"], "medical")
    desk = open_as("desk-qiaokou", "/desk")  # the login page on the way
    live_and_loaded(desk, "#alarms")
    pages = [desk, open_as("desk-qiaokou", f"/alarms/{alarm_id}")]
    pages.append(open_as("patrol-qiaokou", "/patrol", phone=True))
    pages.append(open_as("admin", "/admin"))
    for page in pages:
        page.wait_for_load_state("networkidle")
    assert open_as.refused == [], "every page got all it asked for, and its console shows no error"
    for page in pages:
        # Browsers ask for /favicon.ico by themselves, whatever the page names.
        for src in ("/favicon.ico", page.locator('link[rel="icon"]').get_attribute("href")):
            answer = page.request.get(src)
            assert answer.status == 200 and answer.headers["content-type"].startswith("image/")
            width, height = page.evaluate(DRAW_IMAGE, src)
            assert width >= 16 and width == height, (page.url, src, width, height)


def test_the_patrol_phone_keeps_log_out_on_the_header_row(open_as):
    for username in ("patrol-qiaokou", "patrol-qiaokou-night-team"):  # a short name, a long one
        patrol = open_as(username, "/patrol", phone=True)
        brand = patrol.locator("header.top .brand").bounding_box()
        log_out = patrol.get_by_role("button", name="Log out").bounding_box()
        header = patrol.locator("header.top").bounding_box()
        brand_middle = brand["y"] + brand["height"] / 2
        assert log_out["y"] < brand_middle < log_out["y"] + log_out["height"], (brand, log_out)
        assert log_out["x"] + log_out["width"] <= PHONE["width"], "all of it on the screen"
        assert header["height"] < 2 * log_out["height"], "the header is one row"


def test_the_desk_names_who_answered_by_address_and_role(open_as, fleet):
    desk = open_as("desk-qiaokou", "/desk")
    live_and_loaded(desk, "#alarms")
    alarm_id = raise_alarm(fleet["p-0001-01"], "burglary")
    receipt = fleet["p-0001-08"].ack(alarm_id).wait(20)  # the neighbour at 1单元402室 is coming
    assert receipt is not None and receipt.status == "accepted", receipt

    answered = desk.locator(f'tr[data-alarm-id="{alarm_id}"] [data-testid="answered"]')
    expect(answered).to_have_text("1单元402室 (neighbour, panel)")


def test_the_countdown_keeps_to_one_line(open_as, fleet):
    desk = open_as("desk-city", "/desk")
    live_and_loaded(desk, "#alarms")
    answered = raise_alarm(fleet["p-0003-01"], "burglary")
    fleet["p-0003-08"].ack(answered).wait(20)  # a long "Answered by" narrows the column
    raise_alarm(fleet["p-0001-03"], "fire")
    expect(desk.get_by_test_id("alarm-row")).to_have_count(2)
    row = desk.locator(f'tr[data-alarm-id="{answered}"]')
    expect(row.get_by_test_id("answered")).not_to_have_text("—")
    expect(desk.get_by_test_id("countdown")).to_have_text([re.compile(r"^\d+:\d\d$")] * 2)

    for width in (DESKTOP["width"], 1100):  # the desk's screen, and a laptop's
        desk.set_viewport_size({**DESKTOP, "width": width})
        # Each countdown's cell (the countdown and the step it counts down to) stands as
        # tall as the countdown alone: one line. Measured at once on the rows as they
        # stand: the desk redraws its cells on each change.
        cells = desk.evaluate(
            """() => [...document.querySelectorAll('[data-testid="countdown"]')].map(countdown => {
              const words = document.createRange();
              words.selectNodeContents(countdown.closest("td"));
              return [
                words.toString(),
                words.getBoundingClientRect().height,
                countdown.getBoundingClientRect().height,
              ];
            })"""
        )
        assert len(cells) == 2
        for words, height, one_line in cells:
            assert height < 1.5 * one_line, f"at {width}px, {words!r} is {height}px tall"
