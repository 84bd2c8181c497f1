"""accounts: users, sessions, API tokens

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import Id, Millis, no_rowid

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        # A name is one account however it is capitalised: SQLite compares the column
        # without case; PostgreSQL has no such collation built in, so it keeps the
        # names unique by their lower case (below).
        sa.Column(
            "username",
            sa.Text().with_variant(sa.Text(collation="NOCASE"), "sqlite"),
            nullable=False,
            unique=sqlite,
        ),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("zones", sa.Text, nullable=False, server_default="[]"),  # JSON list; admin: all
        sa.Column("phone", sa.Text),  # links the user to pushes and SMS
        sa.Column("disabled", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", Millis, nullable=False),
        sa.CheckConstraint("role IN ('admin', 'police', 'patrol')", name="users_role"),
        sqlite_autoincrement=True,
    )
    if not sqlite:
        op.create_index("users_username", "users", [sa.text("lower(username)")], unique=True)

    # Only hashes of session and API tokens are kept: a stolen database opens nothing.
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("csrf_token", sa.Text, nullable=False),
        sa.Column("created_at", Millis, nullable=False),
        sa.Column("expires_at", Millis, nullable=False),
        **no_rowid(),
    )
    op.create_index("sessions_by_user", "sessions", ["user_id"])

    op.create_table(
        "api_tokens",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", Millis, nullable=False),
        sa.Column("last_used_at", Millis),
        sqlite_autoincrement=True,
    )
