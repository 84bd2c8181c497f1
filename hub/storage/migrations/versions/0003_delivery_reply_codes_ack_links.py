"""delivery over SMS, voice and push; reply codes; acknowledge links

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import Millis, no_rowid, where

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # What the provider said: its id (a Twilio SID) and the latest delivery status.
    op.add_column("outbox", sa.Column("provider_id", sa.Text))
    op.add_column("outbox", sa.Column("delivery", sa.Text))
    op.add_column("outbox", sa.Column("delivery_at", Millis))
    # Set when a rate limit first held the message back (shown on the timeline once).
    op.add_column("outbox", sa.Column("limited_at", Millis))
    op.create_index(
        "outbox_by_provider", "outbox", ["provider_id"], **where("provider_id IS NOT NULL")
    )
    op.create_index(
        "outbox_sends",
        "outbox",
        ["channel", "recipient", "sent_at"],
        **where("sent_at IS NOT NULL"),
    )

    # "Reply 3 to acknowledge": a small number per phone, unique among its open alarms.
    op.create_table(
        "reply_codes",
        sa.Column("phone", sa.Text, nullable=False),
        sa.Column("alarm_id", sa.Text, sa.ForeignKey("alarms.id"), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", Millis, nullable=False),
        sa.PrimaryKeyConstraint("phone", "alarm_id"),
        **no_rowid(),
    )
    op.create_index("reply_codes_by_code", "reply_codes", ["phone", "code"])

    # The acknowledge link of a push notification: one unguessable token per recipient.
    op.create_table(
        "ack_tokens",
        sa.Column("token", sa.Text, primary_key=True),
        sa.Column("alarm_id", sa.Text, sa.ForeignKey("alarms.id"), nullable=False),
        sa.Column("phone", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", Millis, nullable=False),
        **no_rowid(),
    )

    # Browsers subscribed to Web Push, each for the responder with this phone.
    op.create_table(
        "push_subscriptions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("phone", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False, unique=True),
        sa.Column("p256dh", sa.Text, nullable=False),
        sa.Column("auth", sa.Text, nullable=False),
        sa.Column("created_at", Millis, nullable=False),
    )
    op.create_index("push_subscriptions_by_phone", "push_subscriptions", ["phone"])
