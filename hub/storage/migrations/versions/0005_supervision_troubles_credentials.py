"""panel supervision, troubles, panel credentials

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import Id, Millis, no_rowid, where

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # The last word of each panel, written in batches (never once per heartbeat).
    op.create_table(
        "panel_state",
        sa.Column("panel_id", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),  # online | offline | unknown
        sa.Column("last_seen", Millis),
        sa.Column("battery", sa.Integer),
        sa.Column("fw", sa.Text),
        sa.Column("updated_at", Millis, nullable=False),
        **no_rowid(),
    )

    # Conditions that need someone's attention: a panel offline, tampered, on battery.
    op.create_table(
        "troubles",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("panel_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),  # offline, tamper, low_battery, power_loss…
        sa.Column("opened_at", Millis, nullable=False),
        sa.Column("closed_at", Millis),
        sa.Column("detail", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("troubles_open", "troubles", ["panel_id", "kind"], **where("closed_at IS NULL"))
    # At most one open trouble of a kind per panel: a flapping panel is one trouble.
    op.create_index(
        "troubles_one_open",
        "troubles",
        ["panel_id", "kind"],
        unique=True,
        **where("closed_at IS NULL"),
    )

    # What a provisioned panel logs in with, and the key it signs its events with.
    op.create_table(
        "panel_credentials",
        sa.Column("panel_id", sa.Text, primary_key=True),
        sa.Column("password_hash", sa.Text, nullable=False),  # Mosquitto's password-file format
        sa.Column("hmac_key", sa.Text, nullable=False),  # base64; events are signed with it
        sa.Column("require_signed", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("provisioned_at", Millis, nullable=False),
        **no_rowid(),
    )

    # Troubles notify like alarms do; their outbox rows have no alarm.
    op.create_index("outbox_no_alarm", "outbox", ["channel", "status"], **where("alarm_id IS NULL"))
