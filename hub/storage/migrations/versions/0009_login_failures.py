"""failed logins per client address and per account from it, kept across restarts

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import Millis, no_rowid

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    # Kept in memory, a restart handed a password guesser fresh attempts. One row per
    # address (account = '') and per account tried from it (a hash of the name: people
    # type passwords into the name field too); the wait each earns is worked out from
    # the count and the time of the last failure.
    op.create_table(
        "login_failures",
        sa.Column("address", sa.Text, nullable=False),  # client address (IPv6: its /64)
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failed_at", Millis, nullable=False),
        sa.PrimaryKeyConstraint("address", "account"),
        **no_rowid(),
    )
    # Stale rows are swept oldest first.
    op.create_index("login_failures_by_age", "login_failures", ["last_failed_at"])
