"""Real MQTT brokers for simulations and tests: Mosquitto as a process, the embedded broker
in a thread; each on a free port, each able to stop and start again."""

from __future__ import annotations

import asyncio
import getpass
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from hub.broker.embedded_broker import EmbeddedBroker


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class MosquittoProcess:
    """`mosquitto -c CONFIG` listening on `port`; stop (SIGTERM), start again, reload (SIGHUP)."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.config_path = config_path
        self.port = port
        self.host = "127.0.0.1"
        self.url = f"mqtt://{self.host}:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.config_path)], stdout=log, stderr=log
            )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            log_text = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"mosquitto did not start: {log_text}") from None

    def reload(self) -> None:
        """What an operator does after changing password or ACL files: SIGHUP."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): Mosquitto writes its persistence file on the way out."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Mosquitto(MosquittoProcess):
    """A Mosquitto with a config of its own on a free port: anonymous, persistent."""

    def __init__(self, workdir: Path, *, extra_config: str = "") -> None:
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        super().__init__(workdir / "mosquitto.conf", free_port(), workdir / "mosquitto.log")
        # Persistence on: queued QoS 1 messages of persistent sessions survive a restart.
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir / 'data'}/\n"
            "autosave_interval 1\n"
            "set_tcp_nodelay true\n"
            "max_queued_messages 100000\n"
            # Started as root, Mosquitto drops to user `mosquitto`, which cannot write this
            # (private) directory: no persistence file, so no session survives a restart.
            f"user {getpass.getuser()}\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + extra_config
        )


class EmbeddedBrokerThread:
    """The embedded broker in a thread of its own, so blocking code beside it cannot stall it."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.url = f"mqtt://{self.host}:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: EmbeddedBroker | None = None

    def start(self) -> None:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._broker = EmbeddedBroker(self.host, self.port)
            try:
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._broker.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="embedded-broker", daemon=True)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
        self._loop = self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()


def mosquitto_available() -> bool:
    """Whether a mosquitto binary is installed."""
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()
