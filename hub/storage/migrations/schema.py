"""Column types and index options the revisions share, portable to SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

# Times are epoch milliseconds: PostgreSQL's INTEGER is 32 bits, too small for them.
Millis = sa.BigInteger
# A generated key: SQLite's rowid alias must be spelled INTEGER to count by itself.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def where(clause: str) -> dict[str, Any]:
    """The options of a partial index, for both databases."""
    return {"sqlite_where": sa.text(clause), "postgresql_where": sa.text(clause)}


def no_rowid() -> dict[str, Any]:
    """Table options: on SQLite, a table clustered on its primary key (WITHOUT ROWID)."""
    return {"sqlite_with_rowid": False}
