"""The local Twilio gateway in a process of its own, telling its parent each SMS it accepts.

The bench runs it so: in the bench's own process the gateway's web server and callback
threads shared one interpreter lock with the fleet's event loop, and the loop that stamps
receipts and neighbours' buzzers waited behind them. Each accepted message comes back as
one JSON line on the child's stdout, with the moment its request arrived on the
`time.monotonic()` clock, which every process of the machine shares.

Run as `python -m simulator.gateway_process --phone +1555... --callback-delay 0.05`; it
prints `{"port": N}` once listening and stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Self

from hub.logs import setup_logging
from simulator.twilio_gateway import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioGateway
from simulator.twilio_store import Record, SentMessage

logger = logging.getLogger(__name__)


class GatewayProcess:
    """A `TwilioGateway` in a child process: `start()`, `base_url`, `subscribe()`, `stop()`."""

    def __init__(
        self, *, phone_number: str, callback_delay_s: float = 0.1, log_level: str = "error"
    ) -> None:
        self.phone_number = phone_number
        self.log_level = log_level
        self.callback_delay_s = callback_delay_s
        self.account_sid = DEFAULT_ACCOUNT_SID
        self.auth_token = DEFAULT_AUTH_TOKEN
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self._listeners: list[Callable[[SentMessage], None]] = []
        self._reader: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The API base to give the hub (`TENHUB_TWILIO_API_BASE`)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    def subscribe(self, listener: Callable[[SentMessage], None]) -> None:
        """Call `listener` with each accepted message (from a reader thread of this process)."""
        self._listeners.append(listener)

    def start(self, timeout: float = 30.0) -> Self:
        """Start the child and return once it listens; raise if it cannot."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulator.gateway_process", "--phone", self.phone_number,
             "--callback-delay", str(self.callback_delay_s), "--log-level", self.log_level],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        stdout = self.proc.stdout
        assert stdout is not None
        first: list[str] = []
        # readline blocks: read the first line on a thread, so a silent child times out.
        waiter = threading.Thread(target=lambda: first.append(stdout.readline()))
        waiter.start()
        waiter.join(timeout)
        if not first or not first[0]:
            self.stop()
            raise RuntimeError(f"the Twilio gateway process did not start within {timeout:g} s")
        try:
            self.port = int(json.loads(first[0])["port"])
        except (ValueError, KeyError, TypeError):
            self.stop()
            raise RuntimeError(
                f"the Twilio gateway process said {first[0].strip()[:200]!r}, not its port"
            ) from None
        self._reader = threading.Thread(
            target=self._read, args=(stdout,), name="gateway-records", daemon=True
        )
        self._reader.start()
        return self

    def stop(self) -> None:
        """Close the child's stdin (it stops serving and exits); kill it if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            try:
                message = _message(json.loads(line))
            except (ValueError, KeyError, TypeError):
                logger.warning("not a message from the gateway process: %r", line[:200])
                continue
            for listener in self._listeners:
                try:
                    listener(message)
                except Exception:  # one listener's bug must not deafen the others
                    logger.exception("gateway listener failed")


def _record_line(record: Record) -> str | None:
    """One accepted SMS as a JSON line for the parent; None for a call (not reported)."""
    if not isinstance(record, SentMessage):
        return None
    return json.dumps(
        {"sid": record.sid, "to": record.to, "from": record.from_, "body": record.body,
         "arrived": record.arrived}
    )  # fmt: skip


def _message(fields: dict[str, object]) -> SentMessage:
    return SentMessage(
        sid=str(fields["sid"]), to=str(fields["to"]), from_=str(fields["from"]),
        body=str(fields["body"]), arrived=fields["arrived"],  # type: ignore[arg-type]
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """The child: serve until stdin closes, one JSON line per accepted SMS on stdout."""
    parser = argparse.ArgumentParser(prog="python -m simulator.gateway_process")
    parser.add_argument("--phone", required=True, help="the hub's number")
    parser.add_argument("--callback-delay", type=float, default=0.1)
    parser.add_argument("--log-level", default="error", help="what reaches stderr")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    lock = threading.Lock()

    def report(record: Record) -> None:
        if (line := _record_line(record)) is not None:
            with lock:  # the server's thread; one line at a time
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

    gateway = TwilioGateway(phone_number=args.phone, callback_delay_s=args.callback_delay)
    gateway.subscribe(report)
    gateway.start()
    try:
        with lock:
            sys.stdout.write(json.dumps({"port": gateway.port}) + "\n")
            sys.stdout.flush()
        sys.stdin.read()  # until the parent closes it (or dies)
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
