"""The HTTP client the SMS and voice channels send through, against small real servers.

What matters to a sender: an answer read whole however the server frames it, one
connection kept for many requests, and a clear line between "never left" (send it
again) and "may have arrived" (never send it twice).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alerts import http_client
from alerts.http_client import AnswerLost, HttpClient, RequestNotSent

pytestmark = pytest.mark.asyncio

Answer = Callable[[bytes], bytes | None]  # the request's head → what to write back (None: nothing)


class Server:
    """A TCP server that reads each request and writes what `answer` says, counting
    the connections made to it."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0,
                )  # fmt: skip
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                reply = self.answer(head)
                if reply is None:
                    await asyncio.sleep(5)  # the answer never comes
                    return
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open_now -= 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[tuple[Server, str]]]]:
    servers: list[Server] = []

    async def start(
        answer: Answer, *, close_after: bool = False, tls: ssl.SSLContext | None = None
    ) -> tuple[Server, str]:
        server = Server(answer, close_after)
        port = await server.start(tls)
        servers.append(server)
        return server, f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start  # type: ignore[misc]
    for server in servers:
        await server.stop()


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 201 Created", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def client(**kwargs) -> HttpClient:
    return HttpClient(connect_timeout_s=2, read_timeout_s=2, **kwargs)


async def test_many_requests_share_one_kept_alive_connection(serve):
    server, base = await serve(lambda head: ok(b'{"sid": "SM1"}'))
    http = client()
    for i in range(5):
        response = await http.request(
            "POST", f"{base}/2010-04-01/Messages.json", body=b"To=%2B1555&Body=hi",
            headers={"Authorization": "Basic eA=="}, params={"n": i},
        )  # fmt: skip
        assert (response.status, response.body) == (201, b'{"sid": "SM1"}')
    await http.close()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /2010-04-01/Messages.json?n=0 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nAuthorization: Basic eA==\r\n" in first
    assert first.endswith(b"\r\nContent-Length: 18\r\n\r\nTo=%2B1555&Body=hi")


async def test_a_chunked_answer_is_read_whole_and_the_connection_kept(serve):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
        b"\r\n4\r\n{\"a\"\r\n6;ext=1\r\n: 1, \"\r\n5\r\nb\": 2\r\n1\r\n}\r\n0\r\n\r\n"
    )  # fmt: skip
    server, base = await serve(lambda head: chunked)
    http = client()
    for _ in range(2):
        response = await http.request("GET", f"{base}/x")
        assert response.body == b'{"a": 1, "b": 2}'
        assert response.headers["content-type"] == "application/json"
    await http.close()
    assert server.connections == 1


async def test_an_answer_that_ends_with_the_connection_is_whole_and_not_reused(serve):
    server, base = await serve(
        lambda head: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", close_after=True
    )
    http = client()
    for _ in range(2):
        assert (await http.request("GET", f"{base}/")).body == b"all of it"
    await http.close()
    assert server.connections == 2


async def test_a_request_that_never_got_an_answer_may_have_arrived(serve):
    server, base = await serve(lambda head: None)
    http = HttpClient(connect_timeout_s=2, read_timeout_s=0.3)
    with pytest.raises(AnswerLost) as lost:
        await http.request("POST", f"{base}/send", body=b"x=1")
    assert lost.value.timed_out
    assert len(server.requests) == 1, "it did arrive: the sender must not send it again"
    await http.close()


async def test_a_connection_closed_without_an_answer_is_lost_not_timed_out(serve):
    _, base = await serve(lambda head: b"", close_after=True)
    with pytest.raises(AnswerLost) as lost:
        await client().request("POST", f"{base}/send", body=b"x=1")
    assert not lost.value.timed_out
    assert "closed before the answer" in str(lost.value)


async def test_an_answer_that_is_not_http_is_unreadable(serve):
    _, base = await serve(lambda head: b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(AnswerLost, match="unreadable answer: not HTTP"):
        await client().request("GET", f"{base}/")


async def test_a_closed_port_means_the_request_never_left():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(RequestNotSent, match=f"refused \\(127.0.0.1:{port}\\)"):
        await client().request("POST", f"http://127.0.0.1:{port}/send", body=b"x=1")


async def test_a_connection_idle_too_long_is_not_reused(serve, monkeypatch):
    # The server may have closed it meanwhile: a POST written into it might be lost
    # without telling whether it arrived.
    server, base = await serve(lambda head: ok(b"{}"))
    http = client()
    await http.request("GET", f"{base}/")
    monkeypatch.setattr(http_client, "IDLE_S", 0.0)
    await http.request("GET", f"{base}/")
    await http.close()
    assert server.connections == 2


async def test_no_more_connections_than_the_pool_allows(serve):
    server, base = await serve(lambda head: ok(b"{}"))
    http = client(pool_size=3)
    await asyncio.gather(*(http.request("GET", f"{base}/{i}") for i in range(20)))
    await http.close()
    assert len(server.requests) == 20
    assert server.most_open <= 3


def _self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    return server, trusting


async def test_https_is_verified_and_kept_alive(serve, tmp_path):
    server_tls, trusting = _self_signed(tmp_path)
    server, base = await serve(lambda head: ok(b'{"sid": "SM2"}'), tls=server_tls)
    http = client(ssl_context=trusting)
    for _ in range(3):
        assert (await http.request("POST", f"{base}/send", body=b"x=1")).body == b'{"sid": "SM2"}'
    await http.close()
    assert server.connections == 1

    # A certificate nobody vouches for: refused before anything of the request is sent.
    with pytest.raises(RequestNotSent, match="TLS failed"):
        await client().request("POST", f"{base}/send", body=b"x=1")
    assert len(server.requests) == 3
