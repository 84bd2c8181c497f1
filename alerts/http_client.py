"""A small HTTP/1.1 client for an API such as Twilio's: kept-alive connections (TLS for
https), Content-Length and chunked answers, and errors that say whether the request may
have left.

aiohttp did this for the SMS and voice channels at about twice the CPU per request (its
URL, header, cookie and tracing machinery, none of which a POST to one API needs), on
the event loop that also answers panels: at 500 alarms a second, a thousand SMS.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

MAX_HEAD = 64 * 1024  # status line and headers of an answer
MAX_BODY = 16 * 1024 * 1024
# A connection idle longer is closed, not reused: the server may be closing it (uvicorn
# does after 5 s), and a POST written into a connection the server is closing is lost
# without telling whether it arrived: an SMS marked unknown that was never sent.
IDLE_S = 4.0


class RequestNotSent(Exception):
    """Nothing of the request left: no connection could be made (refused, unresolved,
    TLS refused, or the connect timed out). Safe to send again."""


class AnswerLost(Exception):
    """The request was written but no whole answer came back: it may have been acted on."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An answer: its status, headers (names in lower case) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True  # False once an answer said so, or its end was the connection's
        self.idle_since = time.monotonic()
        self._buffer = bytearray()
        self._answer: asyncio.Future[HttpResponse] | None = None
        self._head: tuple[int, dict[str, str]] | None = None
        self._no_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._parse(eof=False)

    def eof_received(self) -> bool:
        self._parse(eof=True)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            self._parse(eof=True)  # an answer that ends with the connection is whole now
        if self._answer is not None and not self._answer.done():
            reason = f": {exc}" if exc else ""
            lost = AnswerLost(f"the connection closed before the answer{reason}")
            self._answer.set_exception(lost)

    def send(self, request: bytes, no_body: bool) -> asyncio.Future[HttpResponse]:
        """Write a request; the future gets its answer."""
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._head, self._no_body = None, no_body
        self.transport.write(request)
        return self._answer

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, message: str) -> None:
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(AnswerLost(f"unreadable answer: {message}"))
        self.close()

    def _parse(self, *, eof: bool) -> None:
        answer = self._answer
        if answer is None or answer.done():
            if self._buffer or eof:
                self.reusable = False  # bytes nobody asked for, or the server is leaving
            return
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._fail("headers too long")
                return
            try:
                self._head = _head(bytes(self._buffer[:end]))
            except ValueError as exc:
                self._fail(str(exc))
                return
            del self._buffer[: end + 4]
        status, headers = self._head
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._head = None
            self._parse(eof=eof)
            return
        body = self._body(headers, status, eof)
        if body is None:
            return
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        self._answer = None
        self.idle_since = time.monotonic()
        answer.set_result(HttpResponse(status, headers, body))

    def _body(self, headers: dict[str, str], status: int, eof: bool) -> bytes | None:
        """The whole body once it is here (and taken from the buffer); None until then."""
        if self._no_body or status in (204, 304):
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked()
        if (length := headers.get("content-length")) is not None:
            try:
                size = int(length)
            except ValueError:
                self._fail(f"bad Content-Length {length!r}")
                return None
            if size > MAX_BODY:
                self._fail("body too large")
                return None
            if len(self._buffer) < size:
                return None
            body = bytes(self._buffer[:size])
            del self._buffer[:size]
            return body
        # Neither: the body ends with the connection.
        self.reusable = False
        if not eof:
            if len(self._buffer) > MAX_BODY:
                self._fail("body too large")
            return None
        body = bytes(self._buffer)
        self._buffer.clear()
        return body

    def _chunked(self) -> bytes | None:
        buffer, pos, parts = self._buffer, 0, []
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            try:
                size = int(bytes(buffer[pos:line_end]).split(b";", 1)[0], 16)
            except ValueError:
                self._fail("bad chunk size")
                return None
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)  # trailers, then a blank line
                if buffer[line_end : line_end + 4] == b"\r\n\r\n":
                    trailer_end = line_end
                if trailer_end < 0:
                    return None
                del buffer[: trailer_end + 4]
                return b"".join(parts)
            start = line_end + 2
            if len(buffer) < start + size + 2:
                return None
            parts.append(bytes(buffer[start : start + size]))
            if sum(len(p) for p in parts) > MAX_BODY:
                self._fail("body too large")
                return None
            pos = start + size + 2


def _head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not HTTP/1.x: {lines[0][:80]!r}")
    try:
        status = int(rest[:3])
    except ValueError:
        raise ValueError(f"bad status line {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers.setdefault("connection", "close")
    return status, headers


class HttpClient:
    """Requests over kept-alive connections, at most `pool_size` at once per client.

    `connect_timeout_s` bounds making a connection (and its TLS handshake): past it the
    request has not left (RequestNotSent). `read_timeout_s` bounds the wait for the
    answer once the request is written: past it the request may have been acted on
    (AnswerLost). Nothing is ever sent twice here: a POST repeated after a lost answer
    would send an SMS twice.
    """

    def __init__(
        self, *, connect_timeout_s: float, read_timeout_s: float, pool_size: int = 32,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pool_size = pool_size
        # Made once, here: loading the system's certificates reads files for tens of
        # milliseconds, which on every new connection would hold the event loop.
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None,
        body: bytes | None = None, params: dict[str, object] | None = None,
    ) -> HttpResponse:  # fmt: skip
        """Send one request and return its answer (any status)."""
        parts = urlsplit(url)
        scheme, hostname, given_port = parts.scheme.lower(), parts.hostname, parts.port
        if scheme not in ("http", "https") or not hostname:
            raise RequestNotSent(f"not an http(s) URL: {url!r}")
        port = given_port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        if params:
            target += "?" + "&".join(q for q in (parts.query, urlencode(params, doseq=True)) if q)
        elif parts.query:
            target += "?" + parts.query
        host = hostname if ":" not in hostname else f"[{hostname}]"
        if given_port is not None:
            host += f":{given_port}"
        lines = [f"{method.upper()} {target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body is not None or method.upper() in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

        async with self._slots_here():
            key = (scheme, hostname, port)
            conn = self._take_idle(key) or await self._connect(key)
            answer = conn.send(request, no_body=method.upper() == "HEAD")
            loop = asyncio.get_running_loop()
            expiry = loop.call_later(self.read_timeout_s, _expire, answer, self.read_timeout_s)
            try:
                response = await answer
            except BaseException:  # timed out, lost or cancelled: this connection is done
                conn.close()
                self._open.discard(conn)
                raise
            finally:
                expiry.cancel()
            if conn.reusable and not conn.closed:
                self._idle.setdefault(key, []).append(conn)
            else:
                conn.close()
                self._open.discard(conn)
            return response

    async def close(self) -> None:
        """Close every connection."""
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()

    def _slots_here(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            # Connections of another event loop cannot serve this one.
            self._idle.clear()
            self._open.clear()
            self._slots, self._loop = asyncio.Semaphore(self.pool_size), loop
        return self._slots

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if conn.reusable and not conn.closed and transport is not None and (
                not transport.is_closing() and now - conn.idle_since < IDLE_S
            ):  # fmt: skip
                return conn
            conn.close()
            self._open.discard(conn)
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        context = self._ssl_context if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    _Connection, host, port, ssl=context,
                    server_hostname=host if context is not None else None,
                )  # fmt: skip
        except TimeoutError:
            raise RequestNotSent(
                f"connect timed out after {self.connect_timeout_s:g} s ({host}:{port})"
            ) from None
        except OSError as exc:
            raise RequestNotSent(f"{_reason(exc)} ({host}:{port})") from exc
        self._open.add(conn)
        return conn


def _reason(exc: OSError) -> str:
    """What went wrong making a connection, in words (asyncio's own text names the
    address, which the caller adds)."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror or exc}"
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc)


def _expire(answer: asyncio.Future[HttpResponse], after_s: float) -> None:
    if not answer.done():
        answer.set_exception(AnswerLost(f"no answer within {after_s:g} s", timed_out=True))
