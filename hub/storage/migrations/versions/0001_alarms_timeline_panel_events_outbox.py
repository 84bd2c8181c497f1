"""alarms, timeline, panel events, outbox

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import Id, Millis, no_rowid, where

revision = "0001"
down_revision = None


def upgrade() -> None:
    # Every event a panel sent that was stored: the key of deduplication.
    op.create_table(
        "panel_events",
        sa.Column("panel_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        # Canonical JSON, to tell a repeat from a reuse.
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("alarm_id", sa.Text),
        sa.Column("status", sa.Text, nullable=False),  # the receipt it got: accepted | rejected
        sa.Column("error", sa.Text),
        sa.Column("received_at", Millis, nullable=False),
        sa.PrimaryKeyConstraint("panel_id", "seq"),
        **no_rowid(),
    )

    op.create_table(
        "alarms",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("unit_id", sa.Text, nullable=False),
        sa.Column("household_id", sa.Text, nullable=False),
        sa.Column("panel_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("raised_at", Millis, nullable=False),  # hub time
        sa.Column("panel_ts", Millis, nullable=False),  # the panel's own clock
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", Millis, nullable=False),
    )
    op.create_index("alarms_by_unit", "alarms", ["unit_id", "raised_at"])
    op.create_index(
        "alarms_open", "alarms", ["state"], **where("state NOT IN ('resolved', 'cancelled')")
    )

    # Append-only story of each alarm: rows are added, never changed.
    op.create_table(
        "alarm_timeline",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("alarm_id", sa.Text, sa.ForeignKey("alarms.id"), nullable=False),
        sa.Column("at", Millis, nullable=False),
        sa.Column("entry", sa.Text, nullable=False),  # raised, acknowledged, cancelled, ...
        sa.Column("state", sa.Text, nullable=False),  # the alarm's state after this entry
        sa.Column("actor", sa.Text),  # who: panel:p-1, household:u-1/h-2, user:...
        sa.Column("channel", sa.Text),  # through what: panel, sms, voice, push, web
        sa.Column("detail", sa.Text),  # JSON
        sqlite_autoincrement=True,
    )
    op.create_index("alarm_timeline_by_alarm", "alarm_timeline", ["alarm_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION alarm_timeline_append_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'alarm timeline is append-only'
                    USING ERRCODE = 'integrity_constraint_violation';
            END;
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER alarm_timeline_append_only BEFORE UPDATE OR DELETE"
            " ON alarm_timeline FOR EACH ROW EXECUTE FUNCTION alarm_timeline_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER alarm_timeline_no_update BEFORE UPDATE ON alarm_timeline"
            " BEGIN SELECT RAISE(ABORT, 'alarm timeline is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER alarm_timeline_no_delete BEFORE DELETE ON alarm_timeline"
            " BEGIN SELECT RAISE(ABORT, 'alarm timeline is append-only'); END"
        )

    # Notifications, written in the transaction of the change that caused them.
    op.create_table(
        "outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("alarm_id", sa.Text, sa.ForeignKey("alarms.id")),
        sa.Column("channel", sa.Text, nullable=False),  # panel, sms, voice, push
        sa.Column("recipient", sa.Text, nullable=False),  # unit id, phone, subscription id
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("status", sa.Text, nullable=False),  # queued, sending, sent, failed, unknown
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", Millis, nullable=False),
        sa.Column("created_at", Millis, nullable=False),
        sa.Column("sent_at", Millis),
        sa.Column("last_error", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "outbox_due", "outbox", ["status", "next_attempt_at"], **where("status = 'queued'")
    )
    op.create_index("outbox_by_recipient", "outbox", ["channel", "recipient", "id"])
    op.create_index("outbox_by_alarm", "outbox", ["alarm_id"])
