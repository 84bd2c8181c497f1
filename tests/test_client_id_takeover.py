"""A stolen panel login cannot take over the hub's or a neighbour's MQTT connection.

Mosquitto, on the files `tenhub broker-config` writes, and the real `tenhub serve`: a panel
whose password was stolen logs in over and over with the hub's client id, then with its
neighbour's. Were client ids free to choose, each login would throw the owner of the id
off the broker (and, with a clean session, wipe the hub's subscriptions), so no alarm of
the district would be receipted and the neighbour would go offline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import paho.mqtt.client as mqtt
from typer.testing import CliRunner

from devices.panel import ReferencePanel
from tests.brokers import MosquittoProcess, free_port
from tests.test_broker_acl import ROOT, cli_app, cli_env
from tests.waiting import ProcessLogs

ATTEMPTS = 30
ATTACK_S = 10.0


class Takeover:
    """Logs in as `username` with someone else's client id, ATTEMPTS times in ATTACK_S."""

    def __init__(self, port: int, username: str, password: str, client_id: str) -> None:
        self.port, self.username, self.password = port, username, password
        self.client_id = client_id
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(timeout=ATTACK_S + 30)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        for _ in range(ATTEMPTS):
            started = time.monotonic()
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                clean_session=True,
                protocol=mqtt.MQTTv311,
            )
            c.username_pw_set(self.username, self.password)
            answered = threading.Event()

            def on_connect(_c, _u, _f, reason_code, _p, answered=answered) -> None:
                if not reason_code.is_failure:
                    self.accepted += 1
                answered.set()

            c.on_connect = on_connect
            c.connect("127.0.0.1", self.port)
            c.loop_start()
            answered.wait(5)
            # Held a moment, as an attacker keeping the owner off would.
            time.sleep(0.1)
            c.disconnect()
            c.loop_stop()
            time.sleep(max(0.0, ATTACK_S / ATTEMPTS - (time.monotonic() - started)))


class Watch:
    """Whether a panel was ever seen disconnected while watched (polled every 10 ms)."""

    def __init__(self, panel: ReferencePanel) -> None:
        self.panel = panel
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # A panel thrown off reconnects after paho's one-second back-off at the earliest:
        # polling every 10 ms cannot miss that.
        while not self._stop.wait(0.01):
            if not self.panel.connected:
                self.dropped += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.dropped


def test_a_stolen_panel_login_takes_over_neither_the_hubs_nor_a_neighbours_connection(tmp_path):
    env = cli_env(tmp_path)
    run = CliRunner().invoke
    app = cli_app()
    devices = {}
    for panel_id in ("p-1a", "p-1b"):
        shown = run(app, ["panel", "provision", panel_id, "--json"], env=env)
        assert shown.exit_code == 0, shown.output
        devices[panel_id] = json.loads(shown.stdout)
    port = free_port()
    out = tmp_path / "broker"
    written = run(
        app,
        ["broker-config", "--out", str(out), "--listener-port", str(port),
         "--listener-host", "127.0.0.1"],
        env=env,
    )  # fmt: skip
    assert written.exit_code == 0, written.output
    hub_pw = (out / "hub-password").read_text().strip()
    broker = MosquittoProcess(out / "mosquitto.conf", port, tmp_path / "mosquitto.log")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    hub_env = {
        **clean,
        **env,
        "TENHUB_BROKER_URL": f"mqtt://tenhub-hub:{quote(hub_pw, safe='')}@127.0.0.1:{port}",
        "TENHUB_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "TENHUB_LOG_FORMAT": "json",
    }

    def panel(panel_id: str, household_id: str) -> ReferencePanel:
        device = devices[panel_id]
        return ReferencePanel(
            panel_id, "127.0.0.1", port, state_dir=tmp_path / panel_id, username=panel_id,
            password=device["password"], household_id=household_id, unit_id="u-1",
            hmac_key=bytes.fromhex(device["hmac_key"]),
        )  # fmt: skip

    neighbour = panel("p-1b", "h-02")
    broker.start()
    hub = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve"], cwd=ROOT, env=hub_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        logs = ProcessLogs(hub)
        logs.wait_for("connected to broker")
        neighbour.start()
        watch = Watch(neighbour)

        receipt_times = []
        for victim in ("tenhub-hub", "p-1b"):
            stolen = Takeover(port, "p-1a", devices["p-1a"]["password"], victim)
            stolen.start()
            time.sleep(ATTACK_S / 2)  # in the middle of the attack
            sent = time.monotonic()
            receipt = neighbour.raise_alarm("burglary").wait(10)
            receipt_times.append(time.monotonic() - sent)
            assert receipt is not None and receipt.status.value == "accepted", victim
            stolen.join()
            # The stolen login itself is good: only the ids it may use are not its to pick.
            assert stolen.accepted == ATTEMPTS

        dropped = watch.stop()
        print(f"\nreceipt during the takeover attempts: {[f'{t:.3f} s' for t in receipt_times]}")
        assert max(receipt_times) < 1.0, receipt_times
        assert dropped == 0, "the neighbour's panel was thrown off the broker"
        assert neighbour.connected
        messages = [entry["msg"] for entry in logs.lines]
        assert messages.count("connected to broker") == 1, "the hub was thrown off the broker"
        assert "broker connection lost; reconnecting" not in messages
        troubles = [e for e in logs.lines if e["msg"] == "panel trouble"]
        assert troubles == [], troubles  # the neighbour never went offline
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=20) == 0
    finally:
        neighbour.stop()
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        broker.stop()
