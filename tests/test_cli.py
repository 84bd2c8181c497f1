"""The `tenhub` command as an operator and a newcomer meet it, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from devices.panel import ReferencePanel
from tests.brokers import free_port, wait_for_port
from tests.conftest import EXAMPLE_REGISTRY, db_url_of
from tests.waiting import ProcessLogs, ProcessOutput, settled

ROOT = Path(__file__).resolve().parent.parent


def tenhub(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=timeout,
    )


def test_check_config_accepts_the_example_registry():
    result = tenhub("check-config", "--registry", str(EXAMPLE_REGISTRY))
    assert result.returncode == 0, result.stderr
    assert "OK: 3 units, 30 households, 30 panels, 2 patrols, 2 police desks" in result.stdout


def test_check_config_shows_every_mistake_at_its_line(tmp_path):
    bad = tmp_path / "registry.yaml"
    bad.write_text(
        textwrap.dedent("""\
        units:
          - id: u-0001
            name: "Block 1"
            zone: z-a
            key_households: [u-0001/h-09]
            households:
              - {id: h-01, address: "1-101", panel: p-0001-01, phones: ["+15550000101"]}
              - {id: h-02, adress: "1-102", panel: p-0001-02, phones: ["+15550000102"]}
          - id: u-0002
            name: "Block 2"
            zone: z-a
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000201"]}
        patrols:
          - {id: t-a, zone: z-a, members: [{name: "Team", phone: "+15550009001"}]}
        police_desks:
          - {id: d-a, zones: [z-a], phone: "+15550009911"}
        command:
          - {id: c-1, phone: "+15550009999"}
    """)
    )
    result = tenhub("check-config", "--registry", str(bad))
    assert result.returncode == 1
    err = result.stderr
    assert f"{bad}:5:" in err and "u-0001/h-09" in err  # key household that does not exist
    assert f"{bad}:8:" in err and "unknown key 'adress'" in err
    assert f"{bad}:13:" in err and "duplicate panel id 'p-0001-01'" in err  # in two units
    assert "missing required key 'address'" in err
    assert "4 errors, 0 warnings" in err


def test_check_config_refuses_unknown_settings_keys_with_their_line(tmp_path):
    config = tmp_path / "tenhub.toml"
    config.write_text('db_path = "x.db"\nbroker_ulr = "mqtt://localhost"\n')
    result = tenhub("check-config", "--config", str(config), "--registry", str(EXAMPLE_REGISTRY))
    assert result.returncode == 1
    assert f"{config}:2:1: error: broker_ulr: unknown key 'broker_ulr'" in result.stderr


def test_check_config_refuses_a_database_url_the_hub_cannot_use_and_hides_its_password():
    result = tenhub(
        "check-config",
        "--registry",
        str(EXAMPLE_REGISTRY),
        env={"TENHUB_DB_URL": "mysql://tenhub:s3cret@db.example/tenhub"},
    )
    assert result.returncode == 1, result.stderr
    assert "$TENHUB_DB_URL: error: db_url: 'mysql://tenhub:***@db.example/tenhub'" in (
        result.stderr
    )
    assert "tenhub stores its data in PostgreSQL" in result.stderr
    assert "s3cret" not in result.stderr


def test_check_config_refuses_a_broker_ca_file_the_hub_could_not_use(tmp_path):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    cases = [
        (
            {"TENHUB_BROKER_URL": "mqtts://h:8883", "TENHUB_BROKER_CA_FILE": str(not_pem)},
            f"$TENHUB_BROKER_CA_FILE: error: broker_ca_file: {not_pem}: not a PEM file of CA",
        ),
        (
            {
                "TENHUB_BROKER_URL": "mqtts://h:8883",
                "TENHUB_BROKER_CA_FILE": str(tmp_path / "missing.pem"),
            },
            f"broker_ca_file: {tmp_path / 'missing.pem'}: no such file",
        ),
        (
            {"TENHUB_BROKER_URL": "mqtt://h:1883", "TENHUB_BROKER_CA_FILE": str(not_pem)},
            "broker_ca_file: only an mqtts:// broker_url uses a CA file",
        ),
    ]
    for env, said in cases:
        result = tenhub("check-config", "--registry", str(EXAMPLE_REGISTRY), env=env)
        assert result.returncode == 1, result.stderr
        assert said in result.stderr


def test_serve_without_a_registry_says_what_to_do():
    result = tenhub("serve")
    assert result.returncode == 2
    assert "TENHUB_REGISTRY" in result.stderr


def _serve_and_raise_one_alarm(tmp_path, args, env, broker_port, http_port):
    """Run `tenhub serve`, raise one alarm from a reference panel, SIGTERM; returns its logs."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", *args],
        cwd=ROOT,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    http = f"http://127.0.0.1:{http_port}"
    try:
        wait_for_port(http_port, timeout=20)
        deadline = time.monotonic() + 10
        while httpx.get(f"{http}/healthz").status_code != 200:
            assert time.monotonic() < deadline, "hub never became healthy"
            time.sleep(0.1)
        _raise_one_fire(tmp_path, broker_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def _raise_one_fire(tmp_path: Path, broker_port: int) -> None:
    """A reference panel of u-0003 raises a fire and has it receipted `accepted`."""
    panel = ReferencePanel(
        "p-0003-02",
        "127.0.0.1",
        broker_port,
        state_dir=tmp_path / "panel",
        username="p-0003-02",
        household_id="h-02",
        unit_id="u-0003",
    )
    try:
        panel.start()
        receipt = panel.raise_alarm("fire").wait(5)
        assert receipt is not None and receipt.status.value == "accepted"
    finally:
        panel.stop()


def _env_alone(
    tmp_path: Path, broker_port: int, http_port: int, db_url: str | None = None
) -> dict[str, str]:
    """All `tenhub serve` needs from its environment: registry, database, embedded broker."""
    return {
        "TENHUB_REGISTRY": str(EXAMPLE_REGISTRY),
        "TENHUB_DB_PATH": str(tmp_path / "hub.db"),
        **({"TENHUB_DB_URL": db_url} if db_url else {}),
        "TENHUB_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "TENHUB_EMBEDDED_BROKER_ADDR": f"127.0.0.1:{broker_port}",
        "TENHUB_LOG_FORMAT": "json",
    }


def test_serve_runs_from_environment_variables_alone_and_stops_cleanly(tmp_path, db_target):
    broker_port, http_port = free_port(), free_port()
    env = _env_alone(tmp_path, broker_port, http_port, db_url_of(db_target))
    err = _serve_and_raise_one_alarm(tmp_path, [], env, broker_port, http_port)
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert "hub started" in messages and "alarm raised" in messages and "hub stopped" in messages
    raised = next(entry for entry in logs if entry["msg"] == "alarm raised")
    assert raised["panel_id"] == "p-0003-02" and raised["kind"] == "fire"


def test_serve_with_a_config_file_uses_the_external_broker_it_names(tmp_path, mosquitto):
    http_port = free_port()
    config = tmp_path / "tenhub.toml"
    config.write_text(
        f'broker_url = "mqtt://tenhub-hub@127.0.0.1:{mosquitto.port}"\n'
        f'registry = "{EXAMPLE_REGISTRY}"\n'
        'db_path = "data/hub.db"\n'
        f'http_addr = "127.0.0.1:{http_port}"\n'
    )
    err = _serve_and_raise_one_alarm(
        tmp_path, ["--config", str(config)], {}, mosquitto.port, http_port
    )
    assert "alarm raised" in err and "embedded broker" not in err
    assert (tmp_path / "data" / "hub.db").exists(), "db_path is relative to the config file"


def test_a_second_ctrl_c_stops_the_hub_without_waiting_for_unanswered_sms_and_calls(tmp_path):
    # Twilio took the fire's SMS and calls and never answers: stopping waits for them (each
    # may yet be told sent or not) until the operator presses Ctrl-C again. Then the hub
    # stops at once, and they, which may have gone out, are marked unknown; the restarted
    # hub asks Twilio, which has them all: each is confirmed, none sent twice.
    from simulator.twilio_gateway import TwilioGateway

    gateway = TwilioGateway(phone_number="+15550001000", callback_delay_s=0.01).start()
    gateway.hang_next(100, 120)  # every SMS and call of the alarm
    broker_port, http_port = free_port(), free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    env = {
        **clean,
        **_env_alone(tmp_path, broker_port, http_port),
        "TENHUB_TWILIO_API_BASE": gateway.base_url,
        "TENHUB_TWILIO_TIMEOUT_S": "60",
        "TWILIO_ACCOUNT_SID": gateway.account_sid,
        "TWILIO_AUTH_TOKEN": gateway.auth_token,
        "TWILIO_FROM": "+15550001000",
    }

    started: list[subprocess.Popen] = []

    def serve() -> tuple[subprocess.Popen, ProcessLogs]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        logs = ProcessLogs(proc)
        logs.wait_for("hub started")
        return proc, logs

    try:
        proc, logs = serve()
        _raise_one_fire(tmp_path, broker_port)
        hanging = settled(lambda: len(gateway.messages()) + len(gateway.calls()))
        assert hanging >= 3, "a fire's first step texts and calls several people"

        proc.send_signal(signal.SIGINT)
        waiting = logs.wait_for(
            "waiting for the sends in flight to be answered; stop again (Ctrl-C) not to wait"
        )
        assert waiting["count"] == hanging and waiting["at_most_s"] == 65
        # A quiet second in which the hub must not stop: it waits for the answers (up to
        # 65 s), so it is still running after it.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        assert "hub stopped" not in [entry["msg"] for entry in logs.lines]
        proc.send_signal(signal.SIGINT)
        try:  # the answers would keep it up to 65 s: well within that, it has not waited
            assert proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("the second Ctrl-C did not stop the hub within 30 s: it waited")
        unanswered = logs.wait_for("sends still unanswered at stop; they will be marked unknown")
        assert unanswered["count"] == hanging
        assert logs.messages()[-1] == "hub stopped"

        proc, logs = serve()
        marked = logs.wait_for("messages caught mid-send by the last stop are marked unknown")
        assert marked["count"] == hanging
        # The provider is asked about each: it has them all, so each is confirmed.
        confirmed = "send in doubt confirmed: the provider has it"
        deadline = time.monotonic() + 20
        while sum(entry["msg"] == confirmed for entry in logs.lines) < hanging:
            assert time.monotonic() < deadline, "not every send in doubt confirmed"
            time.sleep(0.05)
        sent = len(gateway.messages()) + len(gateway.calls())
        assert sent == hanging, "nothing unanswered is sent again"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        gateway.stop()


def test_ctrl_c_stops_the_demo_cleanly_with_a_summary(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub",
            "demo",
            "--every",
            "0.5",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        cwd=ROOT,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = ProcessOutput(proc.stdout), ProcessOutput(proc.stderr)
    try:
        stdout.wait_for("CANCEL", timeout=60)  # the demo's first cancel, then Ctrl-C
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = stdout.text(), stderr.text()
    assert proc.returncode == 0, err
    assert "stopping…" in out and re.search(r"\b\d+ alarms? raised", out)
    assert "Traceback" not in err
    # The cancel's SMS were still being reported on when Ctrl-C came: the gateway drops
    # those reports, not posts them to a hub that has stopped (a warning for each).
    assert "status callback failed" not in err, err


def test_the_hub_stops_promptly_while_a_desk_watches_the_live_dashboard(tmp_path):
    # A desk's dashboard holds a live stream open for as long as the hub runs. The web
    # server used to take SIGTERM for itself and wait for that stream to end, which it
    # never does: the hub never stopped, until its service manager killed it mid-send.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    http_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "demo", "--every", "60", "--http-addr",
         f"127.0.0.1:{http_port}", "--data-dir", str(tmp_path / "demo")],
        cwd=ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        password = None
        for line in proc.stdout:
            if match := re.search(r"password (\S+)", line):
                password = match[1]
            if "fleet:" in line:
                break
        assert password, "the demo printed no password"
        web = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=web, timeout=10) as desk:
            form = desk.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)[1]
            done = desk.post(
                "/login",
                data={"username": "desk", "password": password, "csrf_token": csrf},
                headers={"Origin": web},
            )
            assert done.status_code == 303, done.text
            with desk.stream("GET", "/api/events", timeout=None) as live:
                chunks = live.iter_text()
                assert next(chunks).startswith("retry:")  # the dashboard is live
                stopped_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                for _ in chunks:  # until the hub ends the stream (a keepalive every 15 s)
                    if time.monotonic() - stopped_at > 20:
                        break
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the hub had not stopped 15 s after SIGTERM, a live stream open")
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert took < 15, f"the hub took {took:.1f} s to stop"
    assert "stopping…" in out and re.search(r"\b\d+ alarms? raised", out)
    assert "Traceback" not in err, err


def test_the_demo_shows_alarm_receipt_neighbours_and_cancel(tmp_path):
    result = tenhub(
        "demo",
        "--loops",
        "1",
        "--every",
        "0.5",
        "--http-addr",
        "127.0.0.1:0",
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "take-over" not in result.stderr, result.stderr
    out = result.stdout
    assert "tenhub demo" in out and "http://127.0.0.1:" in out
    assert out.count("RECEIPT   accepted") == 4  # duress, false alarm, patrol, nobody
    assert out.count("SOUNDING  9/9 neighbour panels") == 4
    assert out.count("cancels with its PIN → accepted; 9 buzzers stopped") == 1  # false alarm
    assert out.count('texts back → "Thank you: you acknowledged') == 1  # the patrol takes one
    assert "24 alarms raised · 24 receipted" in out  # four stories and a storm of twenty
    assert "neighbours sounded 36/36" in out
    # The temporary data folder goes with the demo, and the console said where it was.
    folder = re.search(r"data: (\S+) \(removed on exit", out)
    assert folder and not Path(folder[1]).exists()


def test_sim_gateway_runs_alone_and_prints_each_sms(tmp_path):
    from alerts.channel import OutboxMessage
    from alerts.twilio_channels import SmsChannel, TwilioSettings
    from simulator.twilio_gateway import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN

    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "sim", "gateway", "--port", str(port)],
        cwd=ROOT,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, timeout=20)
        channel = SmsChannel(
            TwilioSettings(
                DEFAULT_ACCOUNT_SID,
                DEFAULT_AUTH_TOKEN,
                "+15550001000",
                api_base=f"http://127.0.0.1:{port}",
            )
        )
        message = OutboxMessage(
            1, None, "sms", "+15550009001", json.dumps({"text": "hello patrol"}), "k", 0
        )

        async def send_once() -> str | None:
            try:
                return await channel.send(message)
            finally:
                await channel.close()

        sid = asyncio.run(send_once())
        assert sid.startswith("SM")
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert f"TENHUB_TWILIO_API_BASE=http://127.0.0.1:{port}" in out
    assert "SMS → +15550009001: hello patrol" in out
