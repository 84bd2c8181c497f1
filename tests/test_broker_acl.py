"""The broker's files, generated from the registry, run by a real Mosquitto.

A panel logs in with its own password, publishes only as itself, and hears only its own
receipts and its own unit's alerts; the hub's account hears every panel and answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
import typer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from devices import topics
from devices.panel import ReferencePanel
from hub.broker.broker_config import (
    BrokerConfigError,
    hub_password,
    panel_accounts,
    write_broker_config,
)
from hub.broker.credential_store import (
    CredentialStore,
    CredentialTx,
    PanelSecrets,
    StoredCredential,
)
from hub.broker.mosquitto_passwords import hash_mosquitto_password, verify_mosquitto_password
from hub.registry.model import Household, Registry, Unit, parse_registry
from hub.storage.db import Database
from tests.brokers import MosquittoProcess, free_port
from tests.tls_certs import make_tls_files
from tests.waiting import ProcessLogs

REGISTRY_YAML = """\
units:
  - id: u-1
    name: "Block 1"
    zone: z-1
    households:
      - {id: h-01, address: "1-101", panel: p-1a, phones: ["+15550000101"]}
      - {id: h-02, address: "1-102", panel: p-1b, phones: ["+15550000102"]}
  - id: u-2
    name: "Block 2"
    zone: z-1
    households:
      - {id: h-01, address: "2-101", panel: p-2a, phones: ["+15550000201"]}
      - {id: h-02, address: "2-102", panel: p-2b, phones: ["+15550000202"]}
"""
ROOT = Path(__file__).resolve().parent.parent
NOT_AUTHORIZED = ReasonCode(PacketTypes.CONNACK, "Not authorized")  # CONNACK 5 in MQTT 3.1.1
SUCCESS = ReasonCode(PacketTypes.CONNACK, "Success")


def make_registry(text: str = REGISTRY_YAML) -> Registry:
    registry, problems = parse_registry(text, "registry.yaml")
    assert registry is not None, [p.format() for p in problems]
    return registry


# --- a Mosquitto run by the generated files --------------------------------------------------


class GeneratedBroker(MosquittoProcess):
    """A credential database, the files written from it and the registry, and Mosquitto."""

    def __init__(self, workdir: Path, registry: Registry) -> None:
        self.out = workdir / "broker"
        super().__init__(self.out / "mosquitto.conf", free_port(), workdir / "mosquitto.log")
        self.registry = registry
        self.db_path = workdir / "tenhub.db"
        self.secrets: dict[str, PanelSecrets] = {}
        self.hub_password, _ = hub_password(self.out)

    def provision(self, *panel_ids: str) -> None:
        self.secrets |= {s.panel_id: s for s in run_store(self.db_path, "provision", *panel_ids)}

    def revoke(self, panel_id: str) -> None:
        run_store(self.db_path, "revoke", panel_id)
        self.secrets.pop(panel_id, None)

    def write(self) -> list[Path]:
        return write_broker_config(
            self.out,
            self.registry,
            run_store(self.db_path, "all"),
            hub_password_hash=hash_mosquitto_password(self.hub_password),
            listener_port=self.port,
            listener_host="127.0.0.1",
            autosave_interval_s=1,
        )

    def panel(self, panel_id: str, **kw: object) -> Client:
        return Client(self.port, panel_id, self.secrets[panel_id].password, **kw)

    def hub(self, **kw: object) -> Client:
        return Client(self.port, "tenhub-hub", self.hub_password, **kw)


def run_store(db_path: Path | str, op: str, *args: str) -> list:
    """Run one CredentialStore operation on the database, as the CLI does."""

    async def main() -> list:
        db = Database(db_path)
        await db.open()
        try:
            store = CredentialStore(db)
            if op == "provision":
                return [await store.provision(p, 1_700_000_000_000) for p in args]
            if op == "revoke":
                return [await store.revoke(p) for p in args]
            return await store.all()
        finally:
            await db.close()

    return asyncio.run(main())


class Client:
    """A paho MQTT 3.1.1 client that records its CONNACK and every message it gets."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        client_id: str | None = None,
        clean_session: bool = True,
        tls: bool = False,
        ca_file: Path | None = None,
    ) -> None:
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self.connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or username or f"anon-{free_port()}",
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls:
            self.c.tls_set(ca_certs=str(ca_file) if ca_file is not None else None)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_a: self._subscribed.set()
        self.c.on_disconnect = lambda *_a: self.disconnected.set()

    def _on_connect(self, _c, _u, _flags, reason_code, _props) -> None:
        self.connack = reason_code
        self._connected.set()

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def connect(self) -> ReasonCode:
        """Connect and return the CONNACK; a refused client stops trying."""
        self.c.connect("127.0.0.1", self.port)
        # Loop by hand until the CONNACK: a refused client then has no thread to wind down.
        deadline = time.monotonic() + 5
        while not self._connected.is_set() and time.monotonic() < deadline:
            self.c.loop(timeout=0.05)
        assert self._connected.is_set(), "no CONNACK"
        if self.connack == SUCCESS:
            self.c.loop_start()
        return self.connack  # type: ignore[return-value]

    def subscribe(self, *filters: str) -> None:
        self._subscribed.clear()
        self.c.subscribe([(f, 1) for f in filters])
        assert self._subscribed.wait(5), "no SUBACK"

    def publish(
        self, topic: str, payload: bytes | str = b"{}", qos: int = 1, retain: bool = False
    ) -> None:
        self.c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def wait_for(self, topic: str, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [p for t, p in self.messages if t == topic]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found
                self._cond.wait(left)

    def topics(self) -> set[str]:
        with self._cond:
            return {t for t, _ in self.messages}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[GeneratedBroker]:
    """Mosquitto on the generated files; p-1a, p-1b and p-2a provisioned, p-2b not."""
    b = GeneratedBroker(tmp_path, make_registry())
    b.provision("p-1a", "p-1b", "p-2a")
    b.write()
    b.start()
    yield b
    b.stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def refused_soon(port: int, username: str, password: str) -> bool:
    """Whether the broker comes to refuse this login: a reload takes effect a little later."""
    deadline = time.monotonic() + 5
    while True:
        client = Client(port, username, password)
        code = client.connect()
        client.close()
        if code == NOT_AUTHORIZED or time.monotonic() > deadline:
            return code == NOT_AUTHORIZED
        time.sleep(0.05)


def connected(clients: list[Client], client: Client) -> Client:
    clients.append(client)
    assert client.connect() == SUCCESS
    return client


# --- stories -------------------------------------------------------------------------------


def test_a_provisioned_panel_logs_in_and_the_hub_hears_its_events(broker, clients):
    hub = connected(clients, broker.hub())
    hub.subscribe(*(t for t, _ in topics.HUB_SUBSCRIPTIONS))
    panel = connected(clients, broker.panel("p-1a"))

    panel.publish(topics.status_topic("p-1a"), b'{"state":"online","ts":1}', retain=True)
    panel.publish(topics.heartbeat_topic("p-1a"), b'{"ts":1}', qos=0)
    panel.publish(topics.event_topic("p-1a"), b'{"type":"alarm","seq":1,"ts":1}')

    assert hub.wait_for(topics.event_topic("p-1a")) == [b'{"type":"alarm","seq":1,"ts":1}']
    assert hub.wait_for(topics.status_topic("p-1a"))
    assert hub.wait_for(topics.heartbeat_topic("p-1a"))


def test_wrong_password_unknown_user_and_anonymous_are_refused(broker, clients):
    cases = [
        Client(broker.port, "p-1a", "not-its-password"),
        Client(broker.port, "p-1a", broker.secrets["p-1b"].password),  # a neighbour's
        Client(broker.port, "p-2b", "whatever"),  # in the registry, never provisioned
        Client(broker.port, "tenhub-hub", broker.secrets["p-1a"].password),
        Client(broker.port, None, None),  # anonymous
    ]
    for client in cases:
        assert client.connect() == NOT_AUTHORIZED


def test_a_panel_cannot_speak_as_another_panel_or_as_the_hub(broker, clients):
    hub = connected(clients, broker.hub())
    hub.subscribe(*(t for t, _ in topics.HUB_SUBSCRIPTIONS))
    victim = connected(clients, broker.panel("p-1b"))
    victim.subscribe(topics.receipt_topic("p-1b"), topics.unit_alert_topic("u-1"))
    thief = connected(clients, broker.panel("p-1a"))

    thief.publish(topics.event_topic("p-1b"), b'{"type":"cancel"}')
    thief.publish(topics.status_topic("p-1b"), b'{"state":"offline"}', retain=True)
    thief.publish(topics.heartbeat_topic("p-2a"), b"{}", qos=0)
    thief.publish(topics.receipt_topic("p-1b"), b'{"seq":1,"status":"accepted"}')
    thief.publish(topics.unit_alert_topic("u-1"), b'{"state":"resolved"}')
    thief.publish("tenhub/v1/other", b"{}")
    # Mosquitto handles one connection's messages in order: once this arrives, any of the
    # forgeries above would have arrived before it.
    thief.publish(topics.event_topic("p-1a"), b'{"seq":2}')

    assert hub.wait_for(topics.event_topic("p-1a")) == [b'{"seq":2}']
    assert hub.topics() == {topics.event_topic("p-1a")}
    victim_sentinel = topics.receipt_topic("p-1b")
    hub.publish(victim_sentinel, b'{"seq":9}')
    assert victim.wait_for(victim_sentinel) == [b'{"seq":9}']
    assert victim.messages == [(victim_sentinel, b'{"seq":9}')]

    # The hub's account may answer panels but not raise events in their name.
    hub.publish(topics.event_topic("p-2a"), b'{"seq":3}')
    thief.publish(topics.event_topic("p-1a"), b'{"seq":4}')
    assert hub.wait_for(topics.event_topic("p-1a"), 2)[-1] == b'{"seq":4}'
    assert topics.event_topic("p-2a") not in hub.topics()


def test_a_panel_hears_only_its_receipts_and_its_units_alerts(broker, clients):
    hub = connected(clients, broker.hub())
    panel = connected(clients, broker.panel("p-1a"))
    # Asking for more than it may read: Mosquitto grants or refuses each filter, but never
    # delivers what the ACL does not allow.
    panel.subscribe(
        "#",
        "tenhub/#",
        "tenhub/v1/panel/+/receipt",
        "tenhub/v1/panel/+/event",
        "tenhub/v1/unit/+/alert",
        topics.receipt_topic("p-1b"),
        topics.unit_alert_topic("u-2"),
        topics.receipt_topic("p-1a"),
        topics.unit_alert_topic("u-1"),
    )
    neighbour = connected(clients, broker.panel("p-1b"))

    neighbour.publish(topics.event_topic("p-1b"), b'{"type":"alarm"}')
    neighbour.publish(topics.status_topic("p-1b"), b'{"state":"online"}', retain=True)
    hub.publish(topics.receipt_topic("p-1b"), b'{"seq":1}')
    hub.publish(topics.receipt_topic("p-2a"), b'{"seq":1}')
    hub.publish(topics.unit_alert_topic("u-2"), b'{"state":"raised"}')
    hub.publish(topics.receipt_topic("p-1a"), b'{"seq":7}')
    hub.publish(topics.unit_alert_topic("u-1"), b'{"state":"raised"}')

    assert panel.wait_for(topics.receipt_topic("p-1a"))[0] == b'{"seq":7}'
    assert panel.wait_for(topics.unit_alert_topic("u-1"))[0] == b'{"state":"raised"}'
    assert panel.topics() == {topics.receipt_topic("p-1a"), topics.unit_alert_topic("u-1")}


def test_reprovisioning_cuts_off_the_stolen_panel_after_a_reload(broker, clients):
    stolen = broker.secrets["p-1b"].password
    thief = connected(clients, broker.panel("p-1b"))

    broker.provision("p-1b")  # the replacement panel
    broker.write()
    broker.reload()

    # Mosquitto checks connected clients again on reload and drops those that fail.
    assert thief.disconnected.wait(5)
    assert Client(broker.port, "p-1b", stolen).connect() == NOT_AUTHORIZED
    assert connected(clients, broker.panel("p-1b"))

    replacement = broker.secrets["p-1b"].password
    broker.revoke("p-1b")
    broker.write()
    broker.reload()
    assert refused_soon(broker.port, "p-1b", replacement)


def test_events_wait_for_the_hub_past_the_default_queue_and_across_a_restart(broker, clients):
    hub = connected(clients, broker.hub(client_id="tenhub-hub", clean_session=False))
    hub.subscribe(topics.HUB_SUBSCRIPTIONS[0][0])  # every panel's events
    hub.close()
    panel = connected(clients, broker.panel("p-2a"))
    count = 1500  # Mosquitto's default max_queued_messages is 1000
    infos = [
        panel.c.publish(topics.event_topic("p-2a"), json.dumps({"seq": n}), qos=1)
        for n in range(count)
    ]
    for info in infos:
        info.wait_for_publish(10)

    broker.stop()  # a clean stop writes the persistence file
    broker.start()

    hub = connected(clients, broker.hub(client_id="tenhub-hub", clean_session=False))
    got = hub.wait_for(topics.event_topic("p-2a"), count, timeout=15)
    assert [json.loads(p)["seq"] for p in got] == list(range(count))


# --- the files -----------------------------------------------------------------------------


def test_our_hashes_have_mosquitto_passwds_form_and_verify_its_hashes(tmp_path):
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path = tmp_path / "pw"
    subprocess.run([exe, "-c", "-b", str(path), "alice", "s3cret-pw"], check=True)
    theirs = path.read_text().strip().removeprefix("alice:")
    ours = hash_mosquitto_password("s3cret-pw")

    assert verify_mosquitto_password("s3cret-pw", theirs)
    assert not verify_mosquitto_password("s3cret-px", theirs)
    assert verify_mosquitto_password("s3cret-pw", ours)
    assert [len(part) for part in ours.split("$")] == [len(p) for p in theirs.split("$")]
    assert ours.startswith("$7$101$") and theirs.startswith("$7$101$")
    assert ours != hash_mosquitto_password("s3cret-pw")  # a fresh salt every time


def test_the_acl_grants_exactly_the_protocols_topics(tmp_path):
    b = GeneratedBroker(tmp_path, make_registry())
    b.provision("p-1a", "p-9z")  # p-9z is not (or no longer) in the registry
    b.write()
    acl = (b.out / "acl").read_text()
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]

    assert rules == [
        "user tenhub-hub",
        "topic read tenhub/v1/panel/+/event",
        "topic read tenhub/v1/panel/+/status",
        "topic read tenhub/v1/panel/+/heartbeat",
        "topic write tenhub/v1/panel/+/receipt",
        "topic write tenhub/v1/unit/+/alert",
        "user p-1a",
        "topic write tenhub/v1/panel/p-1a/event",
        "topic write tenhub/v1/panel/p-1a/status",
        "topic write tenhub/v1/panel/p-1a/heartbeat",
        "topic read tenhub/v1/panel/p-1a/receipt",
        "topic read tenhub/v1/unit/u-1/alert",
    ]
    users = [line.split(":", 1)[0] for line in (b.out / "passwords").read_text().splitlines()]
    assert users == ["tenhub-hub", "p-1a"]
    conf = (b.out / "mosquitto.conf").read_text()
    for line in (
        "allow_anonymous false",
        f"password_file {(b.out / 'passwords').resolve()}",
        f"acl_file {(b.out / 'acl').resolve()}",
        "persistence true",
        f"persistence_location {(b.out / 'data').resolve()}/",
        "set_tcp_nodelay true",
        "max_queued_messages 100000",
    ):
        assert line in conf.splitlines()
    for name in ("passwords", "acl", "mosquitto.conf", "hub-password"):
        assert stat.S_IMODE((b.out / name).stat().st_mode) == 0o600
    assert not [p for p in b.out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "hostile",
    ["p-1/#", "p-1\nuser x", "p-1 +", "P-1", "p-1:$7$1$AA$AA", "u-1/../#", ""],
)
def test_a_hostile_id_never_reaches_a_file(tmp_path, hostile):
    out = tmp_path / "broker"
    good = GeneratedBroker(tmp_path, make_registry())
    good.provision("p-1a")
    good.write()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    credentials = run_store(good.db_path, "all")
    hub_hash = hash_mosquitto_password("hub-password-x")

    # Built without validation, as a registry that slipped past the loader would be.
    def household(panel: str) -> Household:
        return Household.model_construct(id="h-01", address="x", panel=panel, phones=[])

    as_panel = Registry.model_construct(
        units=[
            Unit.model_construct(
                id="u-1", name="x", zone="z-1", key_households=[], households=[household(hostile)]
            )
        ]
    )
    as_unit = Registry.model_construct(
        units=[
            Unit.model_construct(
                id=hostile, name="x", zone="z-1", key_households=[], households=[household("p-1a")]
            )
        ]
    )
    tampered_row = StoredCredential(hostile, credentials[0].password_hash, b"k", True, 1)
    attempts = [
        (as_panel, [*credentials, tampered_row]),
        (as_unit, credentials),
        (make_registry(), [tampered_row]),
    ]
    for registry, creds in attempts:
        with pytest.raises(BrokerConfigError):
            write_broker_config(out, registry, creds, hub_password_hash=hub_hash)
    with pytest.raises(ValueError):
        run_store(good.db_path, "provision", hostile)

    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("username", ["tenhub/#", "hub\nuser x", "hub:x", "hub +", ""])
def test_a_hostile_hub_username_never_reaches_a_file(tmp_path, username):
    hub_hash = hash_mosquitto_password("hub-password-x")
    with pytest.raises(BrokerConfigError):
        write_broker_config(
            tmp_path, make_registry(), [], hub_password_hash=hub_hash, hub_username=username
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["with space", "new\nline"])
def test_an_out_dir_mosquitto_would_misread_is_refused(tmp_path, name):
    hub_hash = hash_mosquitto_password("hub-password-x")
    with pytest.raises(BrokerConfigError):
        write_broker_config(tmp_path / name, make_registry(), [], hub_password_hash=hub_hash)
    assert list(tmp_path.iterdir()) == []


def test_a_hash_that_is_not_a_hash_never_reaches_a_file(tmp_path):
    row = StoredCredential("p-1a", "$7$101$AA==$AA==\nuser x", b"k", True, 1)
    with pytest.raises(BrokerConfigError):
        panel_accounts(make_registry(), [row])


def test_the_store_replaces_secrets_and_gives_the_writer_the_key(db_target):
    db_path = db_target
    (first,) = run_store(db_path, "provision", "p-1a")
    (second,) = run_store(db_path, "provision", "p-1a")
    assert len(first.password) >= 24 and len(first.hmac_key) == 32
    assert first.password != second.password and first.hmac_key != second.hmac_key
    (stored,) = run_store(db_path, "all")
    assert verify_mosquitto_password(second.password, stored.password_hash)
    assert not verify_mosquitto_password(first.password, stored.password_hash)
    assert stored.hmac_key == second.hmac_key and stored.require_signed

    async def in_writer() -> tuple:
        db = Database(db_path)
        await db.open()
        try:

            def check(conn):
                tx = CredentialTx(conn)
                return tx.key_of("p-1a"), tx.require_signed("p-1a"), tx.key_of("p-1b")

            return await db.write(check)
        finally:
            await db.close()

    assert asyncio.run(in_writer()) == (second.hmac_key, True, None)


# --- the commands --------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    """The commands mounted as `tenhub` mounts them."""
    from hub.panels.panel_cli import broker_config, panels

    app = typer.Typer()
    app.add_typer(panels, name="panel")
    app.command("broker-config")(broker_config)
    return app


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The registry written to a file, and the settings by which the commands find it."""
    registry_path = tmp_path / "registry.yaml"
    registry_path.write_text(REGISTRY_YAML)
    return {"TENHUB_REGISTRY": str(registry_path), "TENHUB_DB_PATH": str(tmp_path / "t.db")}


def tls_panel(tmp_path: Path, port: int, device: dict, ca_file: Path) -> ReferencePanel:
    """The reference panel p-1a with the settings it was provisioned with, on TLS."""
    return ReferencePanel(
        "p-1a",
        "127.0.0.1",
        port,
        state_dir=tmp_path / "panel",
        username="p-1a",
        password=device["password"],
        household_id="h-01",
        unit_id="u-1",
        hmac_key=bytes.fromhex(device["hmac_key"]),
        tls=True,
        ca_file=ca_file,
    )


def test_the_commands_provision_and_write_a_broker_mosquitto_accepts(tmp_path, clients):
    env = cli_env(tmp_path)
    run = CliRunner().invoke
    app = cli_app()

    missing = run(app, ["panel", "provision", "p-7x"], env=env)
    assert missing.exit_code == 1 and "no panel 'p-7x'" in missing.output
    no_registry = run(app, ["panel", "provision", "p-1a"], env={**env, "TENHUB_REGISTRY": ""})
    assert no_registry.exit_code == 2

    shown = run(
        app,
        [
            "panel",
            "provision",
            "p-1a",
            "--json",
            "--broker-host",
            "mq.example",
            "--broker-port",
            "1884",
        ],
        env=env,
    )
    assert shown.exit_code == 0, shown.output
    device = json.loads(shown.stdout)
    assert device["broker"] == {"host": "mq.example", "port": 1884, "tls": False}
    assert device["username"] == "p-1a" and device["unit_id"] == "u-1"
    assert device["topics"]["alert"] == "tenhub/v1/unit/u-1/alert"
    assert len(bytes.fromhex(device["hmac_key"])) == 32
    with_qr = run(app, ["panel", "provision", "p-1b", "--no-signing"], env=env)
    assert with_qr.exit_code == 0 and "█" in with_qr.stdout

    listed = run(app, ["panel", "list"], env=env)
    assert "p-1a" in listed.stdout and "optional" in listed.stdout

    out = tmp_path / "broker"
    port = free_port()
    args = [
        "broker-config",
        "--out",
        str(out),
        "--listener-port",
        str(port),
        "--listener-host",
        "127.0.0.1",
    ]
    first = run(app, args, env=env)
    assert first.exit_code == 0, first.output
    again = run(app, args, env=env)
    url = next(line for line in first.stdout.splitlines() if "TENHUB_BROKER_URL=" in line)
    assert url in again.stdout  # the hub's password is kept across runs
    hub_pw = (out / "hub-password").read_text().strip()
    assert f"mqtt://tenhub-hub:{hub_pw}@localhost:{port}" in url

    b = MosquittoProcess(out / "mosquitto.conf", port, tmp_path / "mosquitto.log")
    b.start()
    try:
        assert connected(clients, Client(port, "tenhub-hub", hub_pw))
        assert connected(clients, Client(port, "p-1a", device["password"]))
        revoked = run(app, ["panel", "revoke", "p-1a"], env=env)
        assert revoked.exit_code == 0
        assert run(app, ["panel", "revoke", "p-1a"], env=env).exit_code == 1
        assert run(app, args, env=env).exit_code == 0
        b.reload()
        assert refused_soon(port, "p-1a", device["password"])
    finally:
        for client in clients:
            client.close()
        b.stop()


def test_panels_across_the_network_connect_with_tls_the_hub_beside_the_broker_without(
    tmp_path, clients
):
    # The operator's broker serves panels on TLS, with a certificate from the district's
    # own CA, and keeps the plain listener to the hub on the same machine.
    certs = make_tls_files(tmp_path / "tls", host="127.0.0.1")
    env = cli_env(tmp_path)
    run = CliRunner().invoke
    app = cli_app()
    plain_port, tls_port = free_port(), free_port()

    shown = run(
        app,
        [
            "panel",
            "provision",
            "p-1a",
            "--json",
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            str(tls_port),
            "--broker-tls",
        ],
        env=env,
    )
    assert shown.exit_code == 0, shown.output
    device = json.loads(shown.stdout)
    assert device["broker"] == {"host": "127.0.0.1", "port": tls_port, "tls": True}

    out = tmp_path / "broker"
    written = run(
        app,
        [
            "broker-config",
            "--out",
            str(out),
            "--listener-port",
            str(plain_port),
            "--listener-host",
            "127.0.0.1",
            "--tls-cert",
            str(certs.cert),
            "--tls-key",
            str(certs.key),
            "--tls-port",
            str(tls_port),
            "--tls-host",
            "127.0.0.1",
        ],
        env=env,
    )
    assert written.exit_code == 0, written.output
    assert f"panels connect with TLS on port {tls_port}" in written.stdout
    assert "still listens on every interface" not in written.output
    hub_pw = (out / "hub-password").read_text().strip()

    b = MosquittoProcess(out / "mosquitto.conf", plain_port, tmp_path / "mosquitto.log")
    b.start()
    panel = tls_panel(tmp_path, tls_port, device, certs.ca)
    try:
        hub = connected(clients, Client(plain_port, "tenhub-hub", hub_pw))
        hub.subscribe(*(t for t, _ in topics.HUB_SUBSCRIPTIONS))
        panel.start()
        panel.raise_alarm("burglary")
        (event,) = hub.wait_for(topics.event_topic("p-1a"))
        assert json.loads(event)["type"] == "alarm"

        # The same accounts on the TLS listener: a wrong password is still refused.
        wrong = Client(tls_port, "p-1b", "not-its-password", tls=True, ca_file=certs.ca)
        assert wrong.connect() == NOT_AUTHORIZED
        # A client that does not trust the district's CA does not hand over its password;
        # one without TLS gets nowhere.
        with pytest.raises(ssl.SSLCertVerificationError):
            Client(tls_port, "p-1b", device["password"], tls=True).c.connect("127.0.0.1", tls_port)
        assert plain_mqtt_to(tls_port, "p-1a", device["password"]) == HUNG_UP_UNANSWERED
    finally:
        panel.stop()
        for client in clients:
            client.close()
        b.stop()


HUNG_UP_UNANSWERED = "taken in, then hung up on without a CONNACK"


def plain_mqtt_to(port: int, username: str, password: str) -> str:
    """What becomes of a client speaking plain MQTT (no TLS) to this port.

    A TLS listener takes the connection in, cannot read a TLS handshake from it, and hangs
    up without an MQTT answer. Nothing listening there is no refusal: connecting raises.
    """
    client = Client(port, username, password)
    try:
        client.c.connect("127.0.0.1", port)  # ConnectionRefusedError when nothing listens
        deadline = time.monotonic() + 10
        while client.connack is None:
            if (rc := client.c.loop(timeout=0.05)) != mqtt.MQTT_ERR_SUCCESS:
                return HUNG_UP_UNANSWERED if rc == mqtt.MQTT_ERR_CONN_LOST else f"loop: {rc}"
            if time.monotonic() > deadline:
                return "neither answered nor hung up after 10 s"
        return f"answered with CONNACK {client.connack}"
    finally:
        client.c.disconnect()


def test_broker_config_refuses_a_tls_listener_it_could_not_start(tmp_path):
    certs = make_tls_files(tmp_path / "tls")
    other = make_tls_files(tmp_path / "other")
    env = cli_env(tmp_path)
    run = CliRunner().invoke
    app = cli_app()
    shown = run(
        app,
        ["panel", "provision", "p-1a", "--json", "--broker-host", "mq.example", "--broker-tls"],
        env=env,
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["broker"] == {"host": "mq.example", "port": 8883, "tls": True}
    out = tmp_path / "broker"
    base = ["broker-config", "--out", str(out)]

    half = run(app, [*base, "--tls-cert", str(certs.cert)], env=env)
    assert half.exit_code == 1 and "needs both --tls-cert and --tls-key" in half.output
    mismatched = run(
        app, [*base, "--tls-cert", str(certs.cert), "--tls-key", str(other.key)], env=env
    )
    assert mismatched.exit_code == 1
    assert "the key is not the certificate's" in " ".join(mismatched.output.split())
    missing = run(
        app, [*base, "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(certs.key)], env=env
    )
    assert missing.exit_code == 1 and "no such file" in missing.output
    same_port = run(
        app,
        [*base, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-port", "1883"],
        env=env,
    )
    assert same_port.exit_code == 1 and "cannot share port 1883" in same_port.output
    assert not (out / "mosquitto.conf").exists(), "nothing is written"

    on_every = run(
        app,
        [
            *base,
            "--tls-cert",
            str(certs.cert),
            "--tls-key",
            str(certs.key),
            "--hub-host",
            "mqtt.example.org",
        ],
        env=env,
    )
    assert on_every.exit_code == 0, on_every.output
    hub_pw = (out / "hub-password").read_text().strip()
    # A hub on another machine is told the TLS listener's URL, and that it needs the CA.
    assert f"TENHUB_BROKER_URL=mqtts://tenhub-hub:{hub_pw}@mqtt.example.org:8883" in (
        on_every.stdout
    )
    assert "TENHUB_BROKER_CA_FILE=" in on_every.stdout
    conf = (out / "mosquitto.conf").read_text()
    assert f"listener 8883\ncertfile {certs.cert.resolve()}\nkeyfile {certs.key.resolve()}" in conf
    assert "still listens on every interface" in " ".join(on_every.output.split())


def test_a_hub_on_another_machine_answers_a_panel_with_both_on_tls(tmp_path):
    # Both the hub and the panel reach the broker over the network, on TLS, trusting the
    # district's own CA; without that CA the hub refuses the broker and says why.
    certs = make_tls_files(tmp_path / "tls", host="127.0.0.1")
    env = cli_env(tmp_path)
    run = CliRunner().invoke
    app = cli_app()
    plain_port, tls_port = free_port(), free_port()
    shown = run(app, ["panel", "provision", "p-1a", "--json"], env=env)
    device = json.loads(shown.stdout)
    written = run(
        app,
        [
            "broker-config",
            "--out",
            str(tmp_path / "broker"),
            "--listener-port",
            str(plain_port),
            "--listener-host",
            "127.0.0.1",
            "--tls-cert",
            str(certs.cert),
            "--tls-key",
            str(certs.key),
            "--tls-port",
            str(tls_port),
        ],
        env=env,
    )
    assert written.exit_code == 0, written.output
    hub_pw = (tmp_path / "broker" / "hub-password").read_text().strip()
    b = MosquittoProcess(
        tmp_path / "broker" / "mosquitto.conf", plain_port, tmp_path / "mosquitto.log"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    hub_env = {
        **clean,
        **env,
        "TENHUB_BROKER_URL": f"mqtts://tenhub-hub:{quote(hub_pw, safe='')}@127.0.0.1:{tls_port}",
        "TENHUB_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "TENHUB_LOG_FORMAT": "json",
    }
    started: list[subprocess.Popen] = []

    def serve(**more: str) -> tuple[subprocess.Popen, ProcessLogs]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve"],
            cwd=ROOT,
            env={**hub_env, **more},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc, ProcessLogs(proc)

    panel = tls_panel(tmp_path, tls_port, device, certs.ca)
    b.start()
    try:
        untrusting, logs = serve()
        lost = logs.wait_for("broker connection lost; reconnecting")
        assert "CERTIFICATE_VERIFY_FAILED" in lost["error"]
        untrusting.send_signal(signal.SIGTERM)
        assert untrusting.wait(timeout=20) == 0

        hub, logs = serve(TENHUB_BROKER_CA_FILE=str(certs.ca))
        connected_log = logs.wait_for("connected to broker")
        assert connected_log["broker"] == f"mqtts://tenhub-hub@127.0.0.1:{tls_port}"
        panel.start()
        receipt = panel.raise_alarm("burglary").wait(10)
        assert receipt is not None and receipt.status.value == "accepted"
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=20) == 0
    finally:
        panel.stop()
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        b.stop()
