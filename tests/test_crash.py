"""kill -9 and the ladder: every step that came due while the hub was dead fires once, at once.

The hub runs as a real process against a real Mosquitto (which outlives it), with a ladder
of seconds so the story takes seconds; on SQLite and on PostgreSQL (which outlives it too).
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from devices.panel import ReferencePanel
from hub.storage.db import create_engine
from simulator.hub_process import HubProcess
from simulator.twilio_gateway import TwilioGateway
from tests.brokers import free_port
from tests.conftest import EXAMPLE_REGISTRY, db_url_of

ROOT = Path(__file__).resolve().parent.parent

SHORT_LADDER = textwrap.dedent("""\
    policies:
      default:
        steps:
          - {after: 0s, notify: [neighbors, key_households, patrol], name: first alert}
          - {after: 2s, unless: acknowledged, notify: [police], name: police}
          - {after: 4s, unless: on_scene, notify: [police, command], name: police handling}
""")


class CrashableHub(HubProcess):
    """The hub process with a short ladder, and what a test reads from its database."""

    def __init__(self, tmp_path: Path, broker_port: int, db_target: str, **env: str) -> None:
        policy = tmp_path / "policy.yaml"
        policy.write_text(SHORT_LADDER)
        db_url = db_url_of(db_target)
        super().__init__(
            tmp_path / "hub",
            free_port(),
            {
                "TENHUB_BROKER_URL": f"mqtt://tenhub-hub@127.0.0.1:{broker_port}",
                "TENHUB_REGISTRY": str(EXAMPLE_REGISTRY),
                "TENHUB_POLICY": str(policy),
                # SQLite: the file the hub creates in its folder on its first start.
                **({"TENHUB_DB_URL": db_url} if db_url else {}),
                **env,
            },
        )
        self._reader: sa.Engine | None = None

    def query(self, sql: str, **params) -> list[tuple]:
        """Read the hub's database from outside, read-only, as an operator would."""
        if self._reader is None:
            self._reader = create_engine(self.database, read_only=True)
        with self._reader.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params)]

    def stop(self) -> None:
        super().stop()
        if self._reader is not None:
            self._reader.dispose()

    def steps(self, alarm_id: str) -> dict[int, str]:
        rows = self.query("SELECT step, outcome FROM alarm_steps WHERE alarm_id = :a", a=alarm_id)
        return dict(rows)

    def wait_for_steps(self, alarm_id: str, count: int, timeout: float = 10) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while len(steps := self.steps(alarm_id)) < count:
            assert time.monotonic() < deadline, f"only steps {steps} after {timeout} s"
            time.sleep(0.02)
        return steps


@pytest.fixture
def hub_process(tmp_path, mosquitto, db_target):
    process = CrashableHub(tmp_path, mosquitto.port, db_target)
    yield process
    process.stop()


@pytest.fixture
def panel(tmp_path, mosquitto):
    p = ReferencePanel(
        "p-0002-04",
        "127.0.0.1",
        mosquitto.port,
        state_dir=tmp_path / "panel",
        username="p-0002-04",
        household_id="h-04",
        unit_id="u-0002",
    )
    p.start()
    yield p
    p.stop()


def fired_entries(hub: HubProcess, alarm_id: str) -> list[tuple[int, int, int]]:
    """(step, due_at, fired_at) of every step_fired entry on the alarm's timeline."""
    details = [
        json.loads(detail)
        for (detail,) in hub.query(
            "SELECT detail FROM alarm_timeline"
            " WHERE alarm_id = :a AND entry = 'step_fired' ORDER BY id",
            a=alarm_id,
        )
    ]
    return [(d["step"], d["due_at"], d["fired_at"]) for d in details]


def police_messages(hub: HubProcess, alarm_id: str) -> int:
    return hub.query(
        "SELECT count(*) FROM outbox WHERE alarm_id = :a AND recipient = '+15550009911'",
        a=alarm_id,
    )[0][0]


def test_steps_that_came_due_while_the_hub_was_dead_fire_once_on_restart(hub_process, panel):
    hub_process.start()
    receipt = panel.raise_alarm("burglary").wait(5)
    assert receipt is not None and receipt.status.value == "accepted"
    alarm_id = receipt.alarm_id
    hub_process.wait_for_steps(alarm_id, 1)  # the first step follows the receipt at once
    hub_process.kill()  # before the police step (2 s) is due

    # Time passing is the story here: the police (2 s) and the police handling (4 s) steps
    # fall due while nothing runs, so there is no state to wait on but the clock.
    time.sleep(5)
    assert hub_process.steps(alarm_id) == {0: "fired"}, "a dead hub fires nothing"

    hub_process.start()
    assert hub_process.wait_for_steps(alarm_id, 3) == {0: "fired", 1: "fired", 2: "fired"}
    entries = fired_entries(hub_process, alarm_id)
    assert [step for step, _, _ in entries] == [0, 1, 2], "each once, in order"
    late = {step: fired_at - due_at for step, due_at, fired_at in entries}
    assert late[1] >= 3000 and late[2] >= 1000, "the timeline shows honestly how late"
    assert police_messages(hub_process, alarm_id) == 2 * 2  # SMS + call, two steps


def test_a_step_that_fired_just_before_a_kill_does_not_fire_again(hub_process, panel):
    hub_process.start()
    receipt = panel.raise_alarm("burglary").wait(5)
    alarm_id = receipt.alarm_id
    hub_process.wait_for_steps(alarm_id, 2)
    hub_process.kill()  # right after the police step fired

    hub_process.start()
    assert hub_process.wait_for_steps(alarm_id, 3) == {0: "fired", 1: "fired", 2: "fired"}
    assert [step for step, _, _ in fired_entries(hub_process, alarm_id)] == [0, 1, 2]
    assert police_messages(hub_process, alarm_id) == 2 * 2
    keys = hub_process.query(
        "SELECT idempotency_key FROM outbox WHERE alarm_id = :a AND recipient = '+15550009911'",
        a=alarm_id,
    )
    assert len({k for (k,) in keys}) == 4


def test_messages_queued_and_not_yet_sent_at_a_kill_all_go_out_after_the_restart_none_twice(
    tmp_path, mosquitto, panel, db_target
):
    """The provider is unreachable until after the kill, so no send is in doubt here: every
    message is queued, tried and not sent. A hub killed while the provider has taken a send
    and not yet answered is the reconciliation story: `test_send_reconciliation.py::
    test_a_hub_killed_mid_send_tells_every_recipient_exactly_once_after_restart`."""
    gateway_port = free_port()
    gateway = TwilioGateway(port=gateway_port, callback_delay_s=0.01)
    hub = CrashableHub(
        tmp_path,
        mosquitto.port,
        db_target,
        TWILIO_ACCOUNT_SID=gateway.account_sid,
        TWILIO_AUTH_TOKEN=gateway.auth_token,
        TWILIO_FROM="+15550001000",
        TENHUB_TWILIO_API_BASE=gateway.base_url,
    )
    try:
        hub.start()  # the SMS provider is unreachable: messages wait and are retried
        alarm_id = panel.raise_alarm("burglary").wait(5).alarm_id
        hub.wait_for_steps(alarm_id, 1)  # the first alert's SMS are queued
        deadline = time.monotonic() + 20
        while untried := hub.query(
            "SELECT recipient, status, attempts FROM outbox WHERE alarm_id = :a"
            " AND channel = 'sms' AND NOT (status = 'queued' AND attempts >= 1)", a=alarm_id,
        ):  # fmt: skip
            assert time.monotonic() < deadline, f"not all tried and waiting after 20 s: {untried}"
            time.sleep(0.05)
        queued = hub.query(
            "SELECT recipient FROM outbox WHERE alarm_id = :a AND channel = 'sms'", a=alarm_id
        )
        assert len(queued) >= 10, "every one tried, failed, waiting to be retried"
        hub.kill()

        gateway.start()
        hub.start()
        hub.wait_for_steps(alarm_id, 3)  # the whole (short) ladder has had its say
        deadline = time.monotonic() + 20
        while hub.query(
            "SELECT count(*) FROM outbox WHERE alarm_id = :a AND channel = 'sms'"
            " AND status != 'sent'",
            a=alarm_id,
        )[0][0]:
            assert time.monotonic() < deadline, "not all sent after the restart"
            time.sleep(0.1)
        rows = hub.query(
            "SELECT recipient, count(*) FROM outbox WHERE alarm_id = :a AND channel = 'sms'"
            " GROUP BY recipient",
            a=alarm_id,
        )
        for phone, count in rows:
            # Each message once: as many at the gateway as the outbox holds for the phone.
            assert len(gateway.messages(phone)) == count, f"{phone}: each message once"
    finally:
        hub.stop()
        gateway.stop()
