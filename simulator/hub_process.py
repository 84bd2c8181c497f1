"""`tenhub serve` as a process of its own, that simulations and tests can kill the hard way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


class HubProcess:
    """One hub process on a fixed database and HTTP port; start, kill -9, start again.

    The database is a SQLite file in `workdir`, or the one `TENHUB_DB_URL` in `env` names.
    """

    def __init__(self, workdir: Path, http_port: int, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.db_path = workdir / "hub.db"
        self.log_path = workdir / "hub.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
        self.env = {
            **clean,
            "TENHUB_DB_PATH": str(self.db_path),
            "TENHUB_HTTP_ADDR": f"127.0.0.1:{http_port}",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def database(self) -> str:
        """What the hub stores in: the PostgreSQL URL, or the SQLite file."""
        return self.env.get("TENHUB_DB_URL") or str(self.db_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until /healthz says the hub is connected and storing."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the hub exited; see {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the hub was not healthy after {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush, as a power cut or an OOM kill would do it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, and wait for the orderly shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The last lines of the hub's log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
