"""SQL for accounts of the web dashboard: users, login sessions and API tokens.

Only SHA-256 hashes of session and API tokens are stored: a copy of the database opens
no session. Passwords arrive already hashed (see `hub.passwords`).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from hub.db import Database
from hub.registry import PHONE_RE

ROLES = ("admin", "police", "patrol")
API_TOKEN_PREFIX = "thk_"
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# last_used_at is a hint for operators: refreshing it at most this often keeps token
# requests off the single writer.
_LAST_USED_EVERY_MS = 60_000

_USER_COLUMNS = "u.id, u.username, u.role, u.zones, u.phone, u.disabled"


class AccountError(ValueError):
    """An account change that cannot be made; the message says why, for the operator."""


@dataclass(frozen=True, slots=True)
class User:
    """A person who logs in to the dashboard, and what they may see."""

    id: int
    username: str
    role: str
    zones: tuple[str, ...]
    phone: str | None
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def sees_zone(self, zone: str) -> bool:
        """Admins see every zone; police and patrol users only their own."""
        return self.is_admin or zone in self.zones


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token as listed: never the token itself."""

    id: int
    user_id: int
    name: str
    created_at: int
    last_used_at: int | None


def token_hash(token: str) -> str:
    """The stored form of a session or API token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_new_user(username: str, role: str, zones: tuple[str, ...], phone: str | None) -> None:
    """Raise AccountError when these are not a valid new user."""
    if not USERNAME_RE.fullmatch(username):
        raise AccountError(
            f"{username!r} is not a username: use 1 to 64 letters, digits, '_', '.', '@', '-'"
        )
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if role == "admin" and zones:
        raise AccountError("an admin sees every zone: give no zone")
    if role == "police" and not zones:
        raise AccountError("a police user needs at least one zone (the zones of its desk)")
    if role == "patrol" and len(zones) != 1:
        raise AccountError("a patrol user needs exactly one zone (the zone it patrols)")
    if phone is not None and not PHONE_RE.fullmatch(phone):
        raise AccountError(f"{phone!r} is not an E.164 phone number like +15550000101")


def _user(row: Any) -> User:
    return User(
        id=row[0],
        username=row[1],
        role=row[2],
        zones=tuple(json.loads(row[3])),
        phone=row[4],
        disabled=bool(row[5]),
    )


class AccountStore:
    """Async reads and changes of users, sessions and API tokens."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- users ---------------------------------------------------------------------------

    async def add_user(
        self,
        username: str,
        password_hash: str,
        role: str,
        zones: tuple[str, ...] | list[str],
        phone: str | None,
        now: int,
    ) -> User:
        """Create a user; AccountError if the username is taken or the fields are invalid."""
        zones = tuple(dict.fromkeys(zones))
        check_new_user(username, role, zones, phone)

        def w(d: sqlite_utils.Database) -> User:
            # One writer: nothing can take the name between this check and the insert.
            if d.conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"user {username!r} already exists")
            cur = d.conn.execute(
                "INSERT INTO users (username, password_hash, role, zones, phone, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (username, password_hash, role, json.dumps(list(zones)), phone, now),
            )
            return User(cur.lastrowid or 0, username, role, zones, phone, False)

        return await self.db.write(w)

    async def find_user(self, username: str) -> tuple[User, str] | None:
        """The user with this name (any case) and its password hash, for logging in."""
        row = await self.db.read(
            lambda d: d.conn.execute(
                f"SELECT {_USER_COLUMNS}, u.password_hash FROM users u WHERE u.username = ?",
                (username,),
            ).fetchone()
        )
        return (_user(row), row[6]) if row else None

    async def get_user(self, user_id: int) -> User | None:
        row = await self.db.read(
            lambda d: d.conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = ?", (user_id,)
            ).fetchone()
        )
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        """Every user, by username."""
        rows = await self.db.read(
            lambda d: d.conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users u ORDER BY u.username"
            ).fetchall()
        )
        return [_user(r) for r in rows]

    async def count_users(self) -> int:
        return await self.db.read(
            lambda d: d.conn.execute("SELECT count(*) FROM users").fetchone()[0]
        )

    async def set_disabled(self, username: str, disabled: bool) -> None:
        """Disable (ending its sessions) or enable a user; AccountError if there is none."""

        def w(d: sqlite_utils.Database) -> None:
            user_id = _user_id(d, username)
            d.conn.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user_id))
            if disabled:
                d.conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

        await self.db.write(w)

    async def set_password(self, username: str, password_hash: str) -> None:
        """Replace a user's password and end its sessions; AccountError if there is none."""

        def w(d: sqlite_utils.Database) -> None:
            user_id = _user_id(d, username)
            d.conn.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
            )
            d.conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

        await self.db.write(w)

    # --- sessions ------------------------------------------------------------------------

    async def new_session(self, user_id: int, now: int, ttl_ms: int) -> tuple[str, str]:
        """A new login session: (session token for the cookie, its CSRF token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)

        def w(d: sqlite_utils.Database) -> None:
            # Expired sessions are swept here: logins are rare enough to carry the cost.
            d.conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            d.conn.execute(
                "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_hash(token), user_id, csrf, now, now + ttl_ms),
            )

        await self.db.write(w)
        return token, csrf

    async def session_user(self, token: str, now: int) -> tuple[User, str] | None:
        """The user of a live session and its CSRF token; None if expired, unknown or disabled."""
        row = await self.db.read(
            lambda d: d.conn.execute(
                f"SELECT {_USER_COLUMNS}, s.csrf_token FROM sessions s"
                " JOIN users u ON u.id = s.user_id"
                " WHERE s.token_hash = ? AND s.expires_at > ? AND u.disabled = 0",
                (token_hash(token), now),
            ).fetchone()
        )
        return (_user(row), row[6]) if row else None

    async def end_session(self, token: str) -> None:
        await self.db.write(
            lambda d: d.conn.execute(
                "DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),)
            )
        )

    # --- API tokens ----------------------------------------------------------------------

    async def new_api_token(self, user_id: int, name: str, now: int) -> str:
        """A new API token for the user: returned once, only its hash is kept."""
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)

        def w(d: sqlite_utils.Database) -> None:
            d.conn.execute(
                "INSERT INTO api_tokens (user_id, name, token_hash, created_at)"
                " VALUES (?, ?, ?, ?)",
                (user_id, name, token_hash(token), now),
            )

        await self.db.write(w)
        return token

    async def token_user(self, token: str, now: int) -> User | None:
        """The enabled user an API token belongs to, noting its use; None if unknown."""
        if not token.startswith(API_TOKEN_PREFIX):
            return None
        row = await self.db.read(
            lambda d: d.conn.execute(
                f"SELECT {_USER_COLUMNS}, t.id, t.last_used_at FROM api_tokens t"
                " JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND u.disabled = 0",
                (token_hash(token),),
            ).fetchone()
        )
        if row is None:
            return None
        if row[7] is None or now - row[7] >= _LAST_USED_EVERY_MS:
            await self.db.write(
                lambda d: d.conn.execute(
                    "UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now, row[6])
                )
            )
        return _user(row)

    async def list_api_tokens(self, user_id: int) -> list[ApiToken]:
        """The user's API tokens, oldest first."""
        rows = await self.db.read(
            lambda d: d.conn.execute(
                "SELECT id, user_id, name, created_at, last_used_at FROM api_tokens"
                " WHERE user_id = ? ORDER BY id",
                (user_id,),
            ).fetchall()
        )
        return [ApiToken(*r) for r in rows]

    async def revoke_api_token(self, token_id: int) -> bool:
        """Delete an API token; False if there was none with this id."""
        return await self.db.write(
            lambda d: (
                d.conn.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,)).rowcount == 1
            )
        )


def _user_id(d: sqlite_utils.Database, username: str) -> int:
    row = d.conn.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
    if row is None:
        raise AccountError(f"no user {username!r}")
    return int(row[0])
