"""sends whose outcome is unknown are found without reading the whole outbox

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

from hub.storage.migrations.schema import where

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    # The reconciler asks the provider about each unknown send, every few seconds.
    op.create_index(
        "outbox_in_doubt", "outbox", ["channel", "next_attempt_at"], **where("status = 'unknown'")
    )
