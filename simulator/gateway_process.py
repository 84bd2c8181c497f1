"""The local SMS gateway in a process of its own, as the bench runs it.

In the bench's own process the gateway shared one interpreter lock with 10,000 simulated
panels: SMS were stamped when the fleet let the gateway run, and its status callbacks
trickled out behind the fleet (a hundred in ten seconds at 100 alarms/s, where Twilio
would send four thousand). In a process of its own it answers and calls back as a
remote service does. Each SMS it accepts is reported on stdout as one JSON line, stamped
with `time.monotonic()`, the clock every process of the machine shares.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from simulator.twilio_gateway import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioGateway
from simulator.twilio_store import Record, SentMessage

SmsListener = Callable[[float, str], None]  # (monotonic time accepted, body)


class GatewayProcess:
    """Runs the gateway in a child process; `on_sms` is called from a reader thread."""

    def __init__(self, phone_number: str, callback_delay_s: float, on_sms: SmsListener) -> None:
        self.phone_number = phone_number
        self.callback_delay_s = callback_delay_s
        self.on_sms = on_sms
        self.account_sid = DEFAULT_ACCOUNT_SID
        self.auth_token = DEFAULT_AUTH_TOKEN
        self.base_url = ""
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the child and wait until it serves; RuntimeError when it does not."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulator.gateway_process",
             "--phone", self.phone_number, "--callback-delay", str(self.callback_delay_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            self.proc.wait(10)
            raise RuntimeError(f"the SMS gateway did not start (exit code {self.proc.returncode})")
        self.base_url = json.loads(first)["ready"]
        self._reader = threading.Thread(target=self._read, name="gateway-reports", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            report = json.loads(line)
            self.on_sms(report["t"], report["body"])

    def stop(self) -> None:
        """Close the child's stdin (it stops serving) and wait for it to end."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
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


def main(argv: list[str] | None = None) -> None:
    """Serve until stdin closes; a JSON line on stdout when ready and for each SMS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phone", required=True, help="the hub's own number")
    parser.add_argument("--callback-delay", type=float, default=0.1, help="seconds per status")
    args = parser.parse_args(argv)
    # Callbacks to a hub that has just stopped fail at the end of every bench phase:
    # expected, and not worth a line each.
    logging.basicConfig(level=logging.ERROR)
    lock = threading.Lock()

    def report(record: Record) -> None:
        if isinstance(record, SentMessage):
            line = json.dumps({"t": time.monotonic(), "body": record.body})
            with lock:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

    gateway = TwilioGateway(phone_number=args.phone, callback_delay_s=args.callback_delay)
    gateway.subscribe(report)
    gateway.start()
    try:
        with lock:
            sys.stdout.write(json.dumps({"ready": gateway.base_url}) + "\n")
            sys.stdout.flush()
        sys.stdin.read()  # until the bench closes it, or goes away
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
