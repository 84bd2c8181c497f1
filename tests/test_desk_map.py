"""The desk's map on an operator's tile server: tiles load, units show, alarms cluster red.

A tile server the test starts (a few PNG tiles it makes, each request recorded), a real
hub on a real Mosquitto, reference panels raising alarms, Chromium driving the desk.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hub.passwords import hash_password
from simulator.demo_tiles import png
from tests.hub_thread import HubInThread
from tests.test_browser import (  # noqa: F401 (fixtures)
    PASSWORD,
    browser,
    expect,
    fleet,
    live_and_loaded,
    mosquitto_broker,
    no_alarm_left_open,
    open_as,
    raise_alarm,
)

ATTRIBUTION = "Tiles of the test city"


class TileServer:
    """Serves one grey-green PNG for any /{z}/{x}/{y}.png and remembers what was asked."""

    def __init__(self) -> None:
        tile = png(256, 256, [bytes((200, 220, 200)) * 256] * 256)
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                if not re.fullmatch(r"/\d+/\d+/\d+\.png", self.path):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(tile)))
                self.end_headers()
                self.wfile.write(tile)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.template = f"http://127.0.0.1:{self.server.server_address[1]}/{{z}}/{{x}}/{{y}}.png"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tiles() -> Iterator[TileServer]:
    server = TileServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def running(mosquitto_broker, tmp_path_factory, registry, tiles) -> Iterator[HubInThread]:  # noqa: F811
    url = mosquitto_broker.url.replace("mqtt://", "mqtt://tenhub-hub@")
    runner = HubInThread(
        url,
        tmp_path_factory.mktemp("hub") / "hub.db",
        registry,
        map_tile_url=tiles.template,
        map_tile_attribution=ATTRIBUTION,
    )
    hub = runner.start()
    runner.call(
        hub.accounts.add_user(
            "desk-city", hash_password(PASSWORD), "police", ["z-qiaokou", "z-jianghan"], None, 0
        )
    )
    yield runner
    runner.stop()


def test_the_desk_draws_the_units_on_the_operators_tiles(open_as, tiles):  # noqa: F811
    desk = open_as("desk-city", "/desk")
    live_and_loaded(desk, "#alarms")

    loaded = desk.locator("#map img.leaflet-tile-loaded")
    expect(loaded.first).to_be_visible()
    assert any(re.fullmatch(r"/\d+/\d+/\d+\.png", path) for path in tiles.requests)
    expect(desk.locator("#map .leaflet-control-attribution")).to_contain_text(ATTRIBUTION)
    # Leaflet comes from the hub itself, never from elsewhere.
    scripts = desk.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
    assert all(src.startswith(desk.url.split("/desk")[0]) for src in scripts), scripts
    # Block 3's two buildings stand 80 m apart: one cluster of two; Block 7 on its own.
    expect(desk.locator("#map .unit-cluster")).to_have_count(1)
    expect(desk.locator("#map .unit-cluster")).to_have_text("2")
    expect(desk.locator('#map .unit-pin [data-unit-id="u-0003"]')).to_have_count(1)


def test_when_many_units_alarm_the_clusters_turn_red_and_the_alarms_unit_is_marked(
    open_as,  # noqa: F811
    fleet,  # noqa: F811
):
    desk = open_as("desk-city", "/desk")
    live_and_loaded(desk, "#alarms")
    raise_alarm(fleet["p-0001-03"], "fire")
    raise_alarm(fleet["p-0002-04"], "fire")
    raise_alarm(fleet["p-0002-07"], "gas")
    third = raise_alarm(fleet["p-0003-06"], "burglary")

    cluster = desk.locator("#map .unit-cluster")
    expect(cluster).to_have_class(re.compile(r"\balarm\b"))
    expect(cluster).to_have_text("3")  # three open alarms in the two buildings
    pin = desk.locator("#map .unit-pin").filter(has=desk.locator('[data-unit-id="u-0003"]'))
    expect(pin).to_have_class(re.compile(r"\balarm\b"))
    desk.locator(f'tr[data-alarm-id="{third}"]').hover()
    expect(pin).to_have_class(re.compile(r"\bselected\b"))
