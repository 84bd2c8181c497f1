"""PINs typed on panels are no longer kept in the stored events

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    # Cancels are now stored with a keyed digest in place of the PIN. The PINs of the
    # cancels stored before cannot be turned into digests here (the key is not in the
    # database): they are removed. A late repeat of one of those old cancels is then
    # refused as a reused seq rather than answered as a duplicate; its alarm is long over.
    if op.get_bind().dialect.name != "sqlite":
        # Only SQLite files can hold such cancels: every tenhub that writes to
        # PostgreSQL stores digests. SQLite's JSON functions rewrite the payloads
        # exactly as the hub stored them, keeping the text a repeat is compared with.
        return
    for table in ("panel_events", "panel_events_superseded"):
        op.execute(
            f"UPDATE {table} SET payload = json_set(payload, '$.pin', 'removed')"
            " WHERE type = 'cancel' AND json_extract(payload, '$.pin') IS NOT NULL"
        )
