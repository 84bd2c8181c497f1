"""SQL for the login throttle: failed logins per client address and per (account, address).

The policy (how many failures are free, how long each wait) lives in `hub.web.auth`;
this module only counts. Rows are kept in the database so that restarting the hub does
not hand a password guesser fresh attempts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import text

from hub.storage.db import Conn, Database
from hub.storage.sql_text import query

# The account column of an address's own row, which counts failures on every account.
ANY_ACCOUNT = ""

_FAILURES = query(
    "SELECT account, failures, last_failed_at FROM login_failures WHERE address = :address"
    " AND account IN (:any_account, :account) AND last_failed_at >= :since",
    "account",
    "failures",
    "last_failed_at",
)
_SWEEP = text("DELETE FROM login_failures WHERE last_failed_at < :since")
_ADD_FAILURE = text(
    "INSERT INTO login_failures (address, account, failures, last_failed_at)"
    " VALUES (:address, :account, 1, :now) ON CONFLICT (address, account) DO UPDATE SET"
    " failures = login_failures.failures + 1, last_failed_at = excluded.last_failed_at"
)
_CLEAR_ACCOUNT = text("DELETE FROM login_failures WHERE address = :address AND account = :account")


@dataclass(frozen=True, slots=True)
class Failures:
    """How many logins failed in a row for one key, and when the last one did."""

    count: int
    last_at: int


def account_key(username: str) -> str:
    """The stored form of a name tried at login: a hash, as people type passwords there too."""
    return hashlib.sha256(username.casefold().encode("utf-8")).hexdigest()[:32]


class LoginThrottleStore:
    """Async reads and changes of the failed-login counters."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def failures(
        self, address: str, username: str, since: int
    ) -> tuple[Failures | None, Failures | None]:
        """(the address's failures, the account's failures from it), each if any since `since`."""
        account = account_key(username)
        params = {"address": address, "any_account": ANY_ACCOUNT, "account": account}
        rows = await self.db.read(
            lambda conn: conn.execute(_FAILURES, {**params, "since": since}).all()
        )
        found = {row[0]: Failures(row[1], row[2]) for row in rows}
        return found.get(ANY_ACCOUNT), found.get(account)

    async def add_failure(self, address: str, username: str, now: int, since: int) -> None:
        """Count a failed login of this account from this address, and for the address.

        A count whose last failure is older than `since` starts again from one, and every
        row with no failure since `since` is deleted: the table holds a window's worth.
        """
        account = account_key(username)

        def w(conn: Conn) -> None:
            # Each failure sweeps the rows that went stale since the one before: a
            # range of the age index, never a scan of the table.
            conn.execute(_SWEEP, {"since": since})
            conn.execute(
                _ADD_FAILURE,
                [
                    {"address": address, "account": ANY_ACCOUNT, "now": now},
                    {"address": address, "account": account, "now": now},
                ],
            )

        # Lazy: the commit may be shared with others; the caller still waits for it.
        await self.db.write(w, lazy=True)

    async def clear_account(self, address: str, username: str) -> None:
        """Forget the failures of this account from this address, and only those."""
        account = account_key(username)
        params = {"address": address, "account": account}
        await self.db.write(lambda conn: conn.execute(_CLEAR_ACCOUNT, params))
