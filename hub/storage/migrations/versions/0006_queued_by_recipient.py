"""the sender finds a recipient's queued messages without reading its history

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

from hub.storage.migrations.schema import where

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    # due() asks, per queued message, whether an older one of the same recipient is
    # still queued; without this it read every message the recipient ever had.
    op.create_index(
        "outbox_queued_by_recipient",
        "outbox",
        ["channel", "recipient", "id"],
        **where("status = 'queued'"),
    )
