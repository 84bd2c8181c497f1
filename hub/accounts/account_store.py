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

from sqlalchemy import text

from hub.registry.model import PHONE_RE
from hub.storage.db import Conn, Database
from hub.storage.sql_text import query

ROLES = ("admin", "police", "patrol")
API_TOKEN_PREFIX = "thk_"
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# last_used_at is a hint for operators: refreshing it at most this often keeps token
# requests off the single writer.
_LAST_USED_EVERY_MS = 60_000

_USER = ("id", "username", "role", "zones", "phone", "disabled")
_USER_COLUMNS = ", ".join(f"u.{c}" for c in _USER)
# Usernames are unique whatever their case (`Alice` is `alice`); they are ASCII, where
# lower() is the same in SQLite and PostgreSQL.
_USER_ID = query("SELECT id FROM users WHERE lower(username) = lower(:username)", "id")
_ADD_USER = query(
    "INSERT INTO users (username, password_hash, role, zones, phone, created_at)"
    " VALUES (:username, :password_hash, :role, :zones, :phone, :now) RETURNING id",
    "id",
)
_FIND_USER = query(
    f"SELECT {_USER_COLUMNS}, u.password_hash FROM users u"
    " WHERE lower(u.username) = lower(:username)",
    *_USER,
    "password_hash",
)
_GET_USER = query(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = :id", *_USER)
_LIST_USERS = query(f"SELECT {_USER_COLUMNS} FROM users u ORDER BY lower(u.username)", *_USER)
_COUNT_USERS = query("SELECT count(*) AS n FROM users", "n")
_SET_DISABLED = text("UPDATE users SET disabled = :disabled WHERE id = :id")
_SET_PASSWORD = text("UPDATE users SET password_hash = :password_hash WHERE id = :id")
_END_SESSIONS_OF = text("DELETE FROM sessions WHERE user_id = :user_id")
_SWEEP_SESSIONS = text("DELETE FROM sessions WHERE expires_at <= :now")
_NEW_SESSION = text(
    "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at)"
    " VALUES (:token_hash, :user_id, :csrf_token, :now, :expires_at)"
)
_SESSION_USER = query(
    f"SELECT {_USER_COLUMNS}, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id"
    " WHERE s.token_hash = :token_hash AND s.expires_at > :now AND u.disabled = 0",
    *_USER,
    "csrf_token",
)
_END_SESSION = text("DELETE FROM sessions WHERE token_hash = :token_hash")
_NEW_API_TOKEN = text(
    "INSERT INTO api_tokens (user_id, name, token_hash, created_at)"
    " VALUES (:user_id, :name, :token_hash, :now)"
)
_TOKEN_USER = query(
    f"SELECT {_USER_COLUMNS}, t.id AS token_id, t.last_used_at FROM api_tokens t"
    " JOIN users u ON u.id = t.user_id WHERE t.token_hash = :token_hash AND u.disabled = 0",
    *_USER,
    "token_id",
    "last_used_at",
)
_TOKEN_USED = text("UPDATE api_tokens SET last_used_at = :now WHERE id = :id")
_LIST_API_TOKENS = query(
    "SELECT id, user_id, name, created_at, last_used_at FROM api_tokens"
    " WHERE user_id = :user_id ORDER BY id",
    "id",
    "user_id",
    "name",
    "created_at",
    "last_used_at",
)
_REVOKE_API_TOKEN = text("DELETE FROM api_tokens WHERE id = :id")


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

        def w(conn: Conn) -> User:
            # One writer: nothing can take the name between this check and the insert.
            if conn.execute(_USER_ID, {"username": username}).first():
                raise AccountError(f"user {username!r} already exists")
            user_id = conn.execute(
                _ADD_USER,
                {
                    "username": username,
                    "password_hash": password_hash,
                    "role": role,
                    "zones": json.dumps(list(zones)),
                    "phone": phone,
                    "now": now,
                },
            ).scalar_one()
            return User(user_id, username, role, zones, phone, False)

        return await self.db.write(w)

    async def find_user(self, username: str) -> tuple[User, str] | None:
        """The user with this name (any case) and its password hash, for logging in."""
        row = await self.db.read(
            lambda conn: conn.execute(_FIND_USER, {"username": username}).first()
        )
        return (_user(row), row[6]) if row else None

    async def get_user(self, user_id: int) -> User | None:
        row = await self.db.read(lambda conn: conn.execute(_GET_USER, {"id": user_id}).first())
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        """Every user, by username (whatever its case)."""
        rows = await self.db.read(lambda conn: conn.execute(_LIST_USERS).all())
        return [_user(r) for r in rows]

    async def count_users(self) -> int:
        return await self.db.read(lambda conn: conn.execute(_COUNT_USERS).scalar_one())

    async def set_disabled(self, username: str, disabled: bool) -> None:
        """Disable (ending its sessions) or enable a user; AccountError if there is none."""

        def w(conn: Conn) -> None:
            user_id = _user_id(conn, username)
            conn.execute(_SET_DISABLED, {"disabled": int(disabled), "id": user_id})
            if disabled:
                conn.execute(_END_SESSIONS_OF, {"user_id": user_id})

        await self.db.write(w)

    async def set_password(self, username: str, password_hash: str) -> None:
        """Replace a user's password and end its sessions; AccountError if there is none."""

        def w(conn: Conn) -> None:
            user_id = _user_id(conn, username)
            conn.execute(_SET_PASSWORD, {"password_hash": password_hash, "id": user_id})
            conn.execute(_END_SESSIONS_OF, {"user_id": user_id})

        await self.db.write(w)

    # --- sessions ------------------------------------------------------------------------

    async def new_session(self, user_id: int, now: int, ttl_ms: int) -> tuple[str, str]:
        """A new login session: (session token for the cookie, its CSRF token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        session = {
            "token_hash": token_hash(token),
            "user_id": user_id,
            "csrf_token": csrf,
            "now": now,
            "expires_at": now + ttl_ms,
        }

        def w(conn: Conn) -> None:
            # Expired sessions are swept here: logins are rare enough to carry the cost.
            conn.execute(_SWEEP_SESSIONS, {"now": now})
            conn.execute(_NEW_SESSION, session)

        await self.db.write(w)
        return token, csrf

    async def session_user(self, token: str, now: int) -> tuple[User, str] | None:
        """The user of a live session and its CSRF token; None if expired, unknown or disabled."""
        params = {"token_hash": token_hash(token), "now": now}
        row = await self.db.read(lambda conn: conn.execute(_SESSION_USER, params).first())
        return (_user(row), row[6]) if row else None

    async def end_session(self, token: str) -> None:
        params = {"token_hash": token_hash(token)}
        await self.db.write(lambda conn: conn.execute(_END_SESSION, params))

    # --- API tokens ----------------------------------------------------------------------

    async def new_api_token(self, user_id: int, name: str, now: int) -> str:
        """A new API token for the user: returned once, only its hash is kept."""
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        params = {"user_id": user_id, "name": name, "token_hash": token_hash(token), "now": now}
        await self.db.write(lambda conn: conn.execute(_NEW_API_TOKEN, params))
        return token

    async def token_user(self, token: str, now: int) -> User | None:
        """The enabled user an API token belongs to, noting its use; None if unknown."""
        if not token.startswith(API_TOKEN_PREFIX):
            return None
        params = {"token_hash": token_hash(token)}
        row = await self.db.read(lambda conn: conn.execute(_TOKEN_USER, params).first())
        if row is None:
            return None
        if row[7] is None or now - row[7] >= _LAST_USED_EVERY_MS:
            used = {"now": now, "id": row[6]}
            await self.db.write(lambda conn: conn.execute(_TOKEN_USED, used))
        return _user(row)

    async def list_api_tokens(self, user_id: int) -> list[ApiToken]:
        """The user's API tokens, oldest first."""
        rows = await self.db.read(
            lambda conn: conn.execute(_LIST_API_TOKENS, {"user_id": user_id}).all()
        )
        return [ApiToken(*r) for r in rows]

    async def revoke_api_token(self, token_id: int) -> bool:
        """Delete an API token; False if there was none with this id."""
        return await self.db.write(
            lambda conn: conn.execute(_REVOKE_API_TOKEN, {"id": token_id}).rowcount == 1
        )


def _user_id(conn: Conn, username: str) -> int:
    user_id = conn.execute(_USER_ID, {"username": username}).scalar()
    if user_id is None:
        raise AccountError(f"no user {username!r}")
    return int(user_id)
