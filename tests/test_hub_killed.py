"""A hub killed again and again loses no alarm, even from panels that never repeat one.

Ten panels send 20 alarms a second between them for a minute, each event once: the panel
counts it sent when the broker acknowledges it, and never sends it again. Meanwhile the
hub (a real `tenhub serve`) is killed with SIGKILL ten times and started again. The broker
(a real Mosquitto, which outlives the hub) keeps every event the hub had not acknowledged
in the hub's session; the hub acknowledges an event only once it is stored. At the end
every event the broker took is on an alarm's timeline exactly once, as the hub's API
shows it, and its panel has its receipt.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from devices import topics
from simulator.hub_process import HubProcess
from tests.brokers import Mosquitto, free_port, mosquitto_available
from tests.conftest import EXAMPLE_REGISTRY
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.skipif(not mosquitto_available(), reason="needs mosquitto"),
    pytest.mark.timeout(300),  # a minute of load, and ten restarts of a real hub
]

ROOT = Path(__file__).resolve().parent.parent
PANELS = [f"p-0001-{n:02d}" for n in range(1, 11)]
RATE = 20  # alarms a second, all panels together
DURATION_S = 60.0
KILLS = 10
ADMIN_PASSWORD = "kill-test-password-1"


class OneShotPanel:
    """A panel that publishes each alarm once (QoS 1) and keeps what came back."""

    def __init__(self, panel_id: str, port: int) -> None:
        self.panel_id = panel_id
        self.lock = threading.Lock()
        self.sent: dict[int, int] = {}  # message id -> seq, until the broker's PUBACK
        self.accepted: list[int] = []  # seqs the broker acknowledged
        self.receipts: list[dict] = []
        self.next_seq = 1
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{panel_id}-once", clean_session=False
        )
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topics.receipt_topic(panel_id), 1)
        assert subscribed.wait(10), f"{panel_id} could not subscribe"

    def raise_alarm(self) -> None:
        with self.lock:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
            event = {"type": "alarm", "kind": "burglary", "seq": seq, "ts": int(time.time() * 1000)}
            info = self.client.publish(topics.event_topic(self.panel_id), json.dumps(event), 1)
            self.sent[info.mid] = seq

    def _on_publish(self, _c, _u, mid: int, _reason, _props) -> None:
        with self.lock:
            self.accepted.append(self.sent.pop(mid))

    def _on_message(self, _c, _u, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.receipts.append(json.loads(message.payload))

    def answered(self) -> set[int]:
        with self.lock:
            return {r["seq"] for r in self.receipts}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def admin_token(hub: HubProcess) -> str:
    """An API token for an admin, made the way an operator makes one."""
    env = {**hub.env, "TENHUB_REGISTRY": str(EXAMPLE_REGISTRY)}
    run = [sys.executable, "-m", "hub", "user"]
    subprocess.run(
        [*run, "add", "admin", "--role", "admin", "--password-stdin"],
        input=ADMIN_PASSWORD, text=True, env=env, cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    made = subprocess.run(
        [*run, "token", "admin", "--name", "kill-test"],
        text=True, env=env, cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return made.stdout.strip().split()[-1]


def stored_alarm_events(hub: HubProcess, token: str) -> Counter[tuple[str, int]]:
    """(panel, seq) of every alarm event on every alarm's timeline, through the hub's API."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=hub.url, headers=headers, timeout=30) as api:
        alarms = api.get("/api/alarms", params={"limit": 1000})
        alarms.raise_for_status()
        found: Counter[tuple[str, int]] = Counter()
        for summary in alarms.json():
            alarm = api.get(f"/api/alarms/{summary['id']}")
            alarm.raise_for_status()
            timeline = alarm.json()["timeline"]
            (raised,) = [e for e in timeline if e["entry"] == "raised"]
            panel = raised["detail"]["panel"]
            for entry in timeline:
                if entry["entry"] in ("raised", "repeated"):
                    found[(panel, entry["detail"]["seq"])] += 1
        return found


@pytest.fixture
def mosquitto(tmp_path: Path):
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


def test_every_event_the_broker_took_is_stored_once_through_ten_kills(tmp_path, mosquitto):
    hub = HubProcess(
        tmp_path / "hub",
        free_port(),
        {
            "TENHUB_BROKER_URL": f"mqtt://tenhub-hub@127.0.0.1:{mosquitto.port}",
            "TENHUB_REGISTRY": str(EXAMPLE_REGISTRY),
        },
    )
    hub.start()
    panels = [OneShotPanel(p, mosquitto.port) for p in PANELS]
    kills = 0
    try:
        started = time.monotonic()

        def killer() -> None:
            nonlocal kills
            for k in range(1, KILLS + 1):
                # On schedule; but a hub slow to start (a busy machine) is given half a
                # second of work before the next kill, so each kill cuts it mid-stream.
                time.sleep(max(0.5, started + k * DURATION_S / (KILLS + 1) - time.monotonic()))
                hub.kill()
                kills += 1
                hub.start(timeout=60)

        killing = threading.Thread(target=killer, name="killer")
        killing.start()
        sent = 0
        # The load runs its minute, and on while the kills are not all done.
        while time.monotonic() < started + DURATION_S or killing.is_alive():
            # Paced by the clock: this is the load the story is about.
            time.sleep(max(0.0, started + sent / RATE - time.monotonic()))
            panels[sent % len(panels)].raise_alarm()
            sent += 1
        killing.join()

        wait_until(lambda: sum(len(p.accepted) for p in panels) == sent, "PUBACKs", 15)
        accepted = {p.panel_id: set(p.accepted) for p in panels}
        unanswered = lambda: sum(len(accepted[p.panel_id] - p.answered()) for p in panels)  # noqa: E731
        with contextlib.suppress(AssertionError):  # what never comes is counted below
            wait_until(lambda: unanswered() == 0, "receipts", 30)
        stored = stored_alarm_events(hub, admin_token(hub))
        statuses = Counter(r["status"] for p in panels for r in p.receipts)
        print(
            f"\nkills {kills} in {time.monotonic() - started:.0f} s;"
            f" events the broker took {sum(map(len, accepted.values()))};"
            f" stored {len(stored)} (more than once: {sum(c > 1 for c in stored.values())});"
            f" receipts {sum(statuses.values())} {dict(statuses)}; without one {unanswered()}"
        )
        assert kills == KILLS
        assert unanswered() == 0, "every event the broker took has its receipt"
        taken = {(panel, seq) for panel, seqs in accepted.items() for seq in seqs}
        assert set(stored) == taken, (
            f"lost: {sorted(taken - set(stored))[:10]}, unknown: {sorted(set(stored) - taken)[:10]}"
        )
        assert all(count == 1 for count in stored.values()), "an event stored twice"
        assert statuses.keys() <= {"accepted", "duplicate"}
    finally:
        for panel in panels:
            panel.close()
        hub.stop()
