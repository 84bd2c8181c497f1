"""Mosquitto's password file, ACL file and config, generated from the registry.

A panel may publish only under its own `panel/{id}/` topics and read only its own
receipts and its unit's alerts; the hub's account reads every panel's events and writes
receipts and alerts. Nothing else is allowed: with an ACL file, Mosquitto denies what it
does not list. Every id is checked before it is written, so none can smuggle an MQTT
wildcard or a new line into a file.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devices import topics
from hub.broker.credential_store import StoredCredential
from hub.registry.model import Registry

HUB_USERNAME = "tenhub-hub"
PASSWORD_FILE = "passwords"
ACL_FILE = "acl"
CONF_FILE = "mosquitto.conf"
HUB_PASSWORD_FILE = "hub-password"
DATA_DIR = "data"

# ':' separates user and hash in the password file; '#', '+', '/' and spaces mean
# something in the ACL file.
_USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
_UNSAFE_PATH_RE = re.compile(r"[\s#\x00-\x1f\x7f]")
_HASH_RE = re.compile(r"^\$7\$[0-9]{1,9}\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$")


class BrokerConfigError(ValueError):
    """The files cannot be written as asked: nothing was written."""


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A second listener, for panels across networks the operator does not control."""

    certfile: Path  # the broker's certificate (PEM), with its chain
    keyfile: Path  # its private key (PEM), unencrypted: Mosquitto starts unattended
    port: int = 8883
    host: str | None = None  # None: every interface


@dataclass(frozen=True, slots=True)
class PanelAccount:
    """A provisioned panel of the registry: its broker login and the unit it listens to."""

    panel_id: str
    unit_id: str
    password_hash: str


def panel_accounts(
    registry: Registry, credentials: Iterable[StoredCredential]
) -> list[PanelAccount]:
    """Panels that are both in the registry and provisioned, by panel id.

    Raises BrokerConfigError when any id or hash would not be safe in a file.
    """
    bad = [f"unit {u.id!r}" for u in registry.units if not topics.is_valid_id(u.id)]
    bad += [
        f"panel {h.panel!r}"
        for u in registry.units
        for h in u.households
        if not topics.is_valid_id(h.panel)
    ]
    by_panel: dict[str, StoredCredential] = {}
    for credential in credentials:
        if not topics.is_valid_id(credential.panel_id):
            bad.append(f"credential of {credential.panel_id!r}")
        elif not _HASH_RE.fullmatch(credential.password_hash):
            bad.append(f"password hash of {credential.panel_id!r}")
        else:
            by_panel[credential.panel_id] = credential
    if bad:
        raise BrokerConfigError("not valid in a broker file: " + ", ".join(bad))
    accounts = []
    for panel_id, credential in sorted(by_panel.items()):
        place = registry.panel_place(panel_id)
        if place is not None:
            accounts.append(PanelAccount(panel_id, place.unit.id, credential.password_hash))
    return accounts


def render_passwords(
    hub_username: str, hub_password_hash: str, accounts: list[PanelAccount]
) -> str:
    """Mosquitto password file: the hub's account, then one line per panel."""
    lines = [f"{hub_username}:{hub_password_hash}"]
    lines += [f"{a.panel_id}:{a.password_hash}" for a in accounts]
    return "\n".join(lines) + "\n"


def render_acl(hub_username: str, accounts: list[PanelAccount]) -> str:
    """Mosquitto ACL file: what the hub and each panel may read and write, nothing more."""
    out = [
        "# Written by `tenhub broker-config` from the registry: re-run it, do not edit.",
        "# No `pattern` lines and no lines before the first `user`: anonymous clients and",
        "# anything not listed are denied.",
        "",
        f"user {hub_username}",
        *(f"topic read {topic}" for topic, _qos in topics.HUB_SUBSCRIPTIONS),
        f"topic write {topics.ALL_RECEIPTS}",
        f"topic write {topics.ALL_UNIT_ALERTS}",
    ]
    for a in accounts:
        out += [
            "",
            f"user {a.panel_id}",
            f"topic write {topics.event_topic(a.panel_id)}",
            f"topic write {topics.status_topic(a.panel_id)}",
            f"topic write {topics.heartbeat_topic(a.panel_id)}",
            f"topic read {topics.receipt_topic(a.panel_id)}",
            f"topic read {topics.unit_alert_topic(a.unit_id)}",
        ]
    return "\n".join(out) + "\n"


def render_mosquitto_conf(
    out_dir: Path,
    *,
    listener_port: int,
    listener_host: str | None,
    broker_user: str,
    max_queued_messages: int,
    max_inflight_messages: int,
    autosave_interval_s: int,
    tls: TlsListener | None = None,
) -> str:
    """mosquitto.conf using the password and ACL files of out_dir, by absolute path."""
    base = out_dir.resolve()
    host = f" {listener_host}" if listener_host else ""
    tls_listener = ""
    if tls is not None:
        tls_host = f" {tls.host}" if tls.host else ""
        tls_listener = f"""
# TLS, for panels across networks you do not control: the same accounts and ACL
# (per_listener_settings is off). Panels trust the CA that signed this certificate.
listener {tls.port}{tls_host}
certfile {tls.certfile.resolve()}
keyfile {tls.keyfile.resolve()}
"""
    return f"""\
# Written by `tenhub broker-config`: re-run it rather than editing this file.
# After re-running, `kill -HUP <mosquitto pid>` reloads the password and ACL files.

listener {listener_port}{host}
allow_anonymous false
password_file {base / PASSWORD_FILE}
acl_file {base / ACL_FILE}
# A client's id is its username, whatever it asks for: a stolen panel login could
# otherwise connect with the hub's id (or a neighbour's) and throw that client off the
# broker, over and over, wiping the hub's session and silencing the district.
use_username_as_clientid true
{tls_listener}
# Started as root, Mosquitto drops to this user, which must be able to read the files.
user {broker_user}

# Off by default: queued messages of persistent sessions (events waiting for the hub,
# receipts and alerts waiting for panels) would be lost on a restart.
persistence true
persistence_location {base / DATA_DIR}/
# A crash (not a clean stop) loses at most this many seconds of queued messages.
autosave_interval {autosave_interval_s}

# Nagle's algorithm would hold a receipt up to 40 ms behind a delayed TCP ACK.
set_tcp_nodelay true

# The queue is per client, but the hub's account is the one that needs it: every panel's
# events and statuses wait there while the hub is down or busy. Past this bound Mosquitto
# drops messages silently (the default, 1000, is gone in seconds when a district reconnects).
# Panels' queues stay small: they only receive their receipts and their unit's alerts.
max_queued_messages {max_queued_messages}
# QoS 1 messages in flight to one client before the rest queue: the hub's window.
max_inflight_messages {max_inflight_messages}
"""


def hub_password(out_dir: Path) -> tuple[str, bool]:
    """The hub's broker password, kept in out_dir; made on the first call: (password, new)."""
    path = out_dir / HUB_PASSWORD_FILE
    if path.exists():
        password = path.read_text(encoding="utf-8").strip()
        if not password:
            raise BrokerConfigError(f"{path} is empty: delete it to make a new hub password")
        return password, False
    out_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    _write_atomic(path, password + "\n", 0o600)
    return password, True


def write_broker_config(
    out_dir: Path,
    registry: Registry,
    credentials: Iterable[StoredCredential],
    *,
    hub_password_hash: str,
    hub_username: str = HUB_USERNAME,
    listener_port: int = 1883,
    listener_host: str | None = None,
    broker_user: str | None = None,
    max_queued_messages: int = 100_000,
    max_inflight_messages: int = 100,
    autosave_interval_s: int = 60,
    tls: TlsListener | None = None,
) -> list[Path]:
    """Write passwords, acl and mosquitto.conf into out_dir, each atomically; their paths.

    listener_host None listens on every interface (where the panels are); broker_user
    None runs Mosquitto as the user writing the files, who can read them; tls adds a TLS
    listener. Raises BrokerConfigError, having written nothing, when an id, hash, user,
    port, certificate or key is unusable.
    """
    if not _USERNAME_RE.fullmatch(hub_username):
        raise BrokerConfigError(f"{hub_username!r} cannot be a broker username")
    if not _HASH_RE.fullmatch(hub_password_hash):
        raise BrokerConfigError("the hub's password hash is not a Mosquitto $7$ hash")
    accounts = panel_accounts(registry, credentials)
    if any(a.panel_id == hub_username for a in accounts):
        raise BrokerConfigError(f"panel {hub_username!r} has the hub's username")
    if not 0 < listener_port < 65536:
        raise BrokerConfigError(f"{listener_port} is not a TCP port")
    if listener_host is not None and not _HOST_RE.fullmatch(listener_host):
        raise BrokerConfigError(f"{listener_host!r} is not a host name or address")
    if tls is not None:
        _check_tls(tls, listener_port)
    if min(max_queued_messages, max_inflight_messages, autosave_interval_s) < 0:
        raise BrokerConfigError("queue, in-flight and autosave settings cannot be negative")
    if _UNSAFE_PATH_RE.search(str(out_dir.resolve())):
        raise BrokerConfigError(
            f"{str(out_dir)!r}: Mosquitto's config cannot name a path with spaces,"
            " '#' or control characters"
        )
    user, owner = _broker_user(broker_user)

    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / DATA_DIR
    data.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:
        os.chown(data, *owner)
    files = [
        (out_dir / PASSWORD_FILE, render_passwords(hub_username, hub_password_hash, accounts)),
        (out_dir / ACL_FILE, render_acl(hub_username, accounts)),
        (
            out_dir / CONF_FILE,
            render_mosquitto_conf(
                out_dir,
                listener_port=listener_port,
                listener_host=listener_host,
                broker_user=user,
                max_queued_messages=max_queued_messages,
                max_inflight_messages=max_inflight_messages,
                autosave_interval_s=autosave_interval_s,
                tls=tls,
            ),
        ),
    ]
    for path, text in files:
        _write_atomic(path, text, 0o600, owner)
    return [path for path, _ in files]


def _check_tls(tls: TlsListener, plain_port: int) -> None:
    """Raise BrokerConfigError unless Mosquitto could serve TLS with these files."""
    if not 0 < tls.port < 65536:
        raise BrokerConfigError(f"{tls.port} is not a TCP port")
    if tls.port == plain_port:
        raise BrokerConfigError(f"the TLS listener cannot share port {tls.port} with the plain one")
    if tls.host is not None and not _HOST_RE.fullmatch(tls.host):
        raise BrokerConfigError(f"{tls.host!r} is not a host name or address")
    for path in (tls.certfile, tls.keyfile):
        if _UNSAFE_PATH_RE.search(str(path.resolve())):
            raise BrokerConfigError(
                f"{str(path)!r}: Mosquitto's config cannot name a path with spaces,"
                " '#' or control characters"
            )
        if not path.is_file():
            raise BrokerConfigError(f"{path}: no such file")
    # The check Mosquitto would make at start, made now: a broker that will not start
    # is found by the operator here, not by every panel later. A key with a passphrase
    # is refused too (the password callback fails): Mosquitto would ask for it on a
    # terminal it does not have.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, password=_no_passphrase)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise BrokerConfigError(
            f"{tls.certfile} and {tls.keyfile} cannot serve TLS: {_ssl_reason(exc)}"
        ) from None


def _no_passphrase() -> str:
    raise ValueError("the key is encrypted; give Mosquitto an unencrypted key")


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        return "the key is not the certificate's"
    if isinstance(exc, ssl.SSLError):
        return "they are not a PEM certificate and its PEM key"
    return str(getattr(exc, "strerror", None) or exc)


def _broker_user(wanted: str | None) -> tuple[str, tuple[int, int] | None]:
    """The user Mosquitto runs as, and the (uid, gid) to give the files to, if not ours."""
    me = pwd.getpwuid(os.geteuid())
    if wanted is None or wanted == me.pw_name:
        return me.pw_name, None
    if not _USERNAME_RE.fullmatch(wanted):
        raise BrokerConfigError(f"{wanted!r} is not a user name")
    try:
        user = pwd.getpwnam(wanted)
    except KeyError:
        raise BrokerConfigError(f"no user {wanted!r} on this machine") from None
    if os.geteuid() != 0:
        raise BrokerConfigError(
            f"only root can hand the files to {wanted!r}: run this as root or as {wanted!r}"
        )
    return wanted, (user.pw_uid, user.pw_gid)


def _write_atomic(path: Path, text: str, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace path with text in one step: Mosquitto reloading never sees half a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)  # exactly mode, whatever the umask
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
