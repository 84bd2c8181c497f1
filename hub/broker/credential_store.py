"""SQL for panel credentials: the broker password (as a Mosquitto hash) and the HMAC key.

The clear password leaves the hub once, when the panel is provisioned; only its hash is
kept. Provisioning a panel again replaces both secrets, so a stolen panel is cut off by
provisioning its replacement (and writing the broker's files again).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

from sqlalchemy import text

from devices.topics import is_valid_id
from hub.broker.mosquitto_passwords import hash_mosquitto_password
from hub.storage.db import Conn, Database
from hub.storage.sql_text import query

PASSWORD_BYTES = 24  # token_urlsafe: 32 characters, 192 bits
HMAC_KEY_BYTES = 32

_NAMES = ("panel_id", "password_hash", "hmac_key", "require_signed", "provisioned_at")
_COLUMNS = ", ".join(_NAMES)
_KEY_OF = query("SELECT hmac_key FROM panel_credentials WHERE panel_id = :panel_id", "hmac_key")
_REQUIRE_SIGNED = query(
    "SELECT require_signed FROM panel_credentials WHERE panel_id = :panel_id", "require_signed"
)
_PROVISION = text(
    f"INSERT INTO panel_credentials ({_COLUMNS}) VALUES (:panel_id, :password_hash, :hmac_key,"
    " :require_signed, :provisioned_at) ON CONFLICT (panel_id) DO UPDATE SET"
    " password_hash = excluded.password_hash, hmac_key = excluded.hmac_key,"
    " require_signed = excluded.require_signed, provisioned_at = excluded.provisioned_at"
)
_GET = query(f"SELECT {_COLUMNS} FROM panel_credentials WHERE panel_id = :panel_id", *_NAMES)
_ALL = query(f"SELECT {_COLUMNS} FROM panel_credentials ORDER BY panel_id", *_NAMES)
_REVOKE = text("DELETE FROM panel_credentials WHERE panel_id = :panel_id")


@dataclass(frozen=True, slots=True)
class PanelSecrets:
    """What a panel is given once at provisioning: it is not shown again."""

    panel_id: str
    password: str
    hmac_key: bytes
    require_signed: bool
    provisioned_at: int


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """What the hub keeps of a panel's credential."""

    panel_id: str
    password_hash: str
    hmac_key: bytes
    require_signed: bool
    provisioned_at: int


def _credential(row: object) -> StoredCredential | None:
    if row is None:
        return None
    panel_id, password_hash, key_b64, require_signed, provisioned_at = row  # type: ignore[misc]
    return StoredCredential(
        panel_id, password_hash, base64.b64decode(key_b64), bool(require_signed), provisioned_at
    )


class CredentialTx:
    """Panel keys inside the current transaction (for the writer checking a signed event)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def key_of(self, panel_id: str) -> bytes | None:
        """The panel's HMAC key; None when it was never provisioned or was revoked."""
        key = self.conn.execute(_KEY_OF, {"panel_id": panel_id}).scalar()
        return base64.b64decode(key) if key is not None else None

    def require_signed(self, panel_id: str) -> bool:
        """Whether the panel's events must be signed; False when it has no key to sign with."""
        return bool(self.conn.execute(_REQUIRE_SIGNED, {"panel_id": panel_id}).scalar())


class CredentialStore:
    """Provision, look up and revoke panel credentials."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def provision(self, panel_id: str, now: int, require_signed: bool = True) -> PanelSecrets:
        """New password and key for the panel, replacing any it had; ValueError for a bad id."""
        if not is_valid_id(panel_id):
            raise ValueError(f"{panel_id!r} is not a panel id")
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        key = secrets.token_bytes(HMAC_KEY_BYTES)
        row = {
            "panel_id": panel_id,
            "password_hash": hash_mosquitto_password(password),
            "hmac_key": base64.b64encode(key).decode("ascii"),
            "require_signed": int(require_signed),
            "provisioned_at": now,
        }
        await self.db.write(lambda conn: conn.execute(_PROVISION, row))
        return PanelSecrets(panel_id, password, key, require_signed, now)

    async def get(self, panel_id: str) -> StoredCredential | None:
        """The panel's credential, or None."""
        return await self.db.read(
            lambda conn: _credential(conn.execute(_GET, {"panel_id": panel_id}).first())
        )

    async def all(self) -> list[StoredCredential]:
        """Every credential, by panel id."""
        rows = await self.db.read(lambda conn: conn.execute(_ALL).all())
        return [c for c in map(_credential, rows) if c is not None]

    async def revoke(self, panel_id: str) -> bool:
        """Forget the panel's credential; False when it had none."""
        return await self.db.write(
            lambda conn: conn.execute(_REVOKE, {"panel_id": panel_id}).rowcount > 0
        )
