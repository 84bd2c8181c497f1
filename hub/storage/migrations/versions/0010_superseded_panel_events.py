"""a panel that lost its counter: its earlier events kept aside

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import Millis

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    # A panel replaced or reset starts again at seq 1. Its new event takes the
    # (panel, seq) key that deduplicates; the event stored there before is kept here.
    op.create_table(
        "panel_events_superseded",
        sa.Column("panel_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("alarm_id", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("received_at", Millis, nullable=False),
        sa.Column("superseded_at", Millis, nullable=False),
    )
    op.create_index(
        "panel_events_superseded_by_panel", "panel_events_superseded", ["panel_id", "seq"]
    )
