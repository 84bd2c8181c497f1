"""The demo's own map tiles: an imaginary street plan drawn on request, served over HTTP.

The demo runs with no outside service, so its desk map cannot fetch a city's tiles; it
draws these instead (streets, blocks, a park here and there, a river) in the XYZ scheme
every tile server uses. They show what the desk looks like on real tiles; they are not a
survey of any place.
"""

from __future__ import annotations

import math
import re
import struct
import threading
import zlib
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TILE = 256
ATTRIBUTION = "Demo tiles: an imaginary street plan drawn by tenhub"
_PATH = re.compile(r"^/(\d{1,2})/(\d+)/(\d+)\.png$")
_GROUND = (242, 239, 233)
_BLOCK = (230, 226, 218)
_PARK = (200, 230, 196)
_ROAD = (255, 255, 255)
_MAIN = (252, 214, 164)
_WATER = (170, 211, 223)
# Street spacing in world pixels at zoom 16 (about 120 m in Wuhan): scaled for other zooms.
_STREET_Z16 = 96
_MAIN_EVERY = 5  # every fifth street is a main road
# World pixel row of latitude 30.588 at zoom 16: the river's mean course.
_RIVER_Y16 = (1 - math.asinh(math.tan(math.radians(30.588))) / math.pi) / 2 * TILE * 2**16


def png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An RGB PNG of `rows` (each width × 3 bytes), with zlib as the only tool."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _line_kind(world: int, spacing: float) -> int:
    """0: a block, 1: a street, 2: a main road, along one axis of world pixels."""
    index, offset = divmod(world, spacing)
    main = int(index) % _MAIN_EVERY == 0
    width = max(2.0, spacing / (7 if main else 12))
    if offset < width:
        return 2 if main else 1
    return 0


@lru_cache(maxsize=512)
def tile_png(z: int, x: int, y: int) -> bytes:
    """The tile at zoom z, column x, row y: the same picture for the same place, every time."""
    scale = 2.0 ** (z - 16)
    spacing = _STREET_Z16 * scale
    streets = spacing >= 6  # zoomed far out, streets would be noise: ground and water only
    columns = [x * TILE + px for px in range(TILE)]
    column_kind = [_line_kind(wx, spacing) if streets else 0 for wx in columns]
    column_block = [int(wx // spacing) * 7919 if streets else 0 for wx in columns]
    # The river's course, fixed in world terms so that every zoom agrees.
    river = [_RIVER_Y16 + 260 * math.sin(wx / scale / 700) for wx in columns]
    ground, block, park, road, main, water = (
        bytes(c) for c in (_GROUND, _BLOCK, _PARK, _ROAD, _MAIN, _WATER)
    )
    rows = []
    for py in range(TILE):
        wy = y * TILE + py
        row_kind = _line_kind(wy, spacing) if streets else 0
        block_row = int(wy // spacing) * 104729 if streets else 0
        if not streets:
            colours = [ground] * TILE
        elif row_kind == 2:
            colours = [main] * TILE
        elif row_kind == 1:
            colours = [main if k == 2 else road for k in column_kind]
        else:
            colours = [
                main if k == 2 else road if k == 1 else park if (b + block_row) % 23 == 0 else block
                for k, b in zip(column_kind, column_block, strict=True)
            ]
        at = wy / scale
        for px, centre in enumerate(river):
            if abs(at - centre) < 22:
                colours[px] = water
        rows.append(b"".join(colours))
    return png(TILE, TILE, rows)


class _TileHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        match = _PATH.match(self.path)
        if not match:
            self.send_error(404)
            return
        z, x, y = (int(g) for g in match.groups())
        if not (0 <= x < 2**z and 0 <= y < 2**z and z <= 20):
            self.send_error(404)
            return
        body = tile_png(z, x, y)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "public, max-age=3600")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the demo's console tells its own story


class DemoTileServer:
    """Serves `tile_png` at http://host:port/{z}/{x}/{y}.png from a thread of its own."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadingHTTPServer((host, port), _TileHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-tiles", daemon=True
        )

    @property
    def url_template(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{{z}}/{{x}}/{{y}}.png"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
