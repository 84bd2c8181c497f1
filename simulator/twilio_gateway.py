"""A local server that speaks the parts of Twilio's REST API the hub uses, and plays the phones.

Tests, the simulator and the demo point the hub's `twilio` client at it instead of
api.twilio.com: it keeps every message and call, sends signed status callbacks, answers
SMS and keypresses as a phone would, and injects faults (errors, lost answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Self

import httpx
import uvicorn

from hub.web.server import EmbeddedServer
from simulator.twilio_api import GatewayConfig, create_gateway_app
from simulator.twilio_store import GatewayStore, PlacedCall, Record, SentMessage
from simulator.twilio_webhooks import (
    CallbackScheduler,
    gather_request,
    gather_target,
    inbound_sms_request,
)

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "tenhub-local-auth-token"


class TwilioGateway:
    """The gateway and its runner: `start()` in a thread, or `await serve()` in a running loop."""

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        callback_delay_s: float = 0.1,
        sms_url: str | None = None,
        phone_number: str | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port
        self.sms_url = sms_url  # where replies go, as the hub's number is configured at Twilio
        self.phone_number = phone_number  # the hub's number, when no message tells it
        self.store = GatewayStore()
        self._callbacks = CallbackScheduler(auth_token)
        self.app = create_gateway_app(
            GatewayConfig(account_sid, auth_token, callback_delay_s),
            self.store,
            self._callbacks.at,
            self._callbacks.post,
            self._hang,
        )
        self._server: EmbeddedServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The API base to give the hub (`TENHUB_TWILIO_API_BASE`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- running ------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve in a background thread with its own loop; return once listening."""
        sock = self._bind()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(sock))
            except BaseException as exc:
                errors.append(exc)

        self._thread = threading.Thread(target=run, name="twilio-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not (self._server and self._server.started) and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise TimeoutError("the Twilio gateway did not start within 10 s")
            time.sleep(0.01)
        if errors:
            raise errors[0]
        if not self._thread.is_alive():
            raise RuntimeError("the Twilio gateway stopped while starting")
        return self

    async def serve(self) -> None:
        """Serve in the running event loop until `stop()`."""
        await self._serve(self._bind())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Serve in the running event loop for the `async with` block; listening on entry."""
        task = asyncio.create_task(self.serve(), name="twilio-gateway")
        while not (self._server and self._server.started):
            if task.done():
                task.result()
                raise RuntimeError("the Twilio gateway stopped while starting")
            await asyncio.sleep(0.01)
        try:
            yield self
        finally:
            self.stop()
            await task

    def stop(self) -> None:
        """Stop serving (ending any hung request) and stop the callbacks."""
        server, loop, closing = self._server, self._loop, self._closing
        if server is None or loop is None or closing is None:
            return
        server.should_exit = True
        if _running_loop() is loop:
            closing.set()
        else:
            loop.call_soon_threadsafe(closing.set)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(15)
            self._thread = None

    def stop_callbacks(self) -> None:
        """Drop the status callbacks not yet posted; messages are still accepted.

        Called before stopping the hub they go to: posted to a hub that has gone, each
        fails with a warning (a Ctrl-C of the demo printed one per report of its last SMS).
        """
        self._callbacks.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it: an answer's body must not wait ~40 ms behind the
        # client's delayed ACK for its headers (Nagle), as it would with every request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        self.port = sock.getsockname()[1]
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        self._server = EmbeddedServer(
            uvicorn.Config(
                # log_config=None: the program that embeds the gateway configures logging.
                self.app,
                log_config=None,
                log_level="warning",
                lifespan="off",
                access_log=False,
                timeout_graceful_shutdown=2,
            )
        )
        self._callbacks.start()
        try:
            await self._server.serve(sockets=[sock])
        finally:
            self._callbacks.stop()
            sock.close()
            self._server = None

    async def _hang(self, seconds: float) -> None:
        assert self._closing is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    # -- what was sent ------------------------------------------------------------------

    def messages(self, to: str | None = None) -> list[SentMessage]:
        """Every accepted message, oldest first; only those to `to` when given."""
        return self.store.messages(to)

    def calls(self, to: str | None = None) -> list[PlacedCall]:
        """Every accepted call, oldest first; only those to `to` when given."""
        return self.store.calls(to)

    def wait_for_messages(
        self, count: int, to: str | None = None, timeout: float = 5.0
    ) -> list[SentMessage]:
        """Block until `count` messages (to `to`) arrived or the timeout; return them all."""
        return self.store.wait_for_messages(count, to, timeout)

    def wait_for_calls(
        self, count: int, to: str | None = None, timeout: float = 5.0
    ) -> list[PlacedCall]:
        """Block until `count` calls (to `to`) arrived or the timeout; return them all."""
        return self.store.wait_for_calls(count, to, timeout)

    async def wait_for_messages_async(
        self, count: int, to: str | None = None, timeout: float = 5.0
    ) -> list[SentMessage]:
        """`wait_for_messages` for a test whose hub shares its event loop."""
        return await asyncio.to_thread(self.store.wait_for_messages, count, to, timeout)

    def wait_for_status(self, sid: str, status: str, timeout: float = 5.0) -> bool:
        """Block until message or call `sid` reached `status`; False on timeout."""
        return self.store.wait_for_status(sid, status, timeout)

    def subscribe(self, listener: Callable[[Record], None]) -> None:
        """Call `listener` with each new message or call (from the server's thread)."""
        self.store.subscribe(listener)

    # -- faults -------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next `n` create requests with `status` and a Twilio error; keep nothing."""
        self.store.fail_next(n, status)

    def hang_next(self, n: int, seconds: float) -> None:
        """Keep the next `n` create requests, but answer only after `seconds`."""
        self.store.hang_next(n, seconds)

    def fail_delivery(self, to: str, status: str = "undelivered", error_code: int = 30003) -> None:
        """Messages to `to` end in `status` (with `error_code`) instead of "delivered"."""
        self.store.fail_delivery(to, status, error_code)

    def fail_call(self, to: str, status: str = "no-answer") -> None:
        """Calls to `to` end in `status` ("no-answer", "busy", "failed") instead of "completed"."""
        self.store.fail_call(to, status)

    def reset_faults(self) -> None:
        """Answer and deliver normally again."""
        self.store.reset_faults()

    # -- the phones ---------------------------------------------------------------------

    def reply(
        self, from_phone: str, body: str, to_url: str | None = None, *, to: str | None = None
    ) -> httpx.Response:
        """Send an SMS from `from_phone` to the hub's webhook, signed; return the hub's answer."""
        with httpx.Client(timeout=10) as client:
            return client.send(self._inbound_sms(from_phone, body, to_url, to))

    async def reply_async(
        self, from_phone: str, body: str, to_url: str | None = None, *, to: str | None = None
    ) -> httpx.Response:
        """`reply` for a test whose hub shares its event loop."""
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.send(self._inbound_sms(from_phone, body, to_url, to))

    def press(self, call_sid: str, digits: str, to_url: str | None = None) -> httpx.Response:
        """Press `digits` during a call: post the signed Gather result; return the hub's answer.

        Without `to_url` it goes to the `<Gather action>` of the call's TwiML.
        """
        with httpx.Client(timeout=10) as client:
            return client.send(self._gather(call_sid, digits, to_url))

    async def press_async(
        self, call_sid: str, digits: str, to_url: str | None = None
    ) -> httpx.Response:
        """`press` for a test whose hub shares its event loop."""
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.send(self._gather(call_sid, digits, to_url))

    def _inbound_sms(
        self, from_phone: str, body: str, to_url: str | None, to: str | None
    ) -> httpx.Request:
        url = to_url or self.sms_url
        if url is None:
            raise ValueError("no SMS webhook: pass to_url or set sms_url")
        # A phone answers the number that wrote to it.
        last = self.store.messages(from_phone)
        hub_number = to or (last[-1].from_ if last else self.phone_number)
        if hub_number is None:
            raise ValueError(f"no message went to {from_phone}: pass to= (the hub's number)")
        return inbound_sms_request(
            url, from_phone, hub_number, body, self.account_sid, self.auth_token
        )

    def _gather(self, call_sid: str, digits: str, to_url: str | None) -> httpx.Request:
        call = self.store.get(call_sid)
        if not isinstance(call, PlacedCall):
            raise KeyError(f"no call {call_sid}")
        method = "POST"
        if to_url is None:
            if call.twiml is None:
                raise ValueError(f"call {call_sid} has no inline TwiML: pass to_url")
            to_url, method = gather_target(call.twiml)
        return gather_request(to_url, method, call, digits, self.account_sid, self.auth_token)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
