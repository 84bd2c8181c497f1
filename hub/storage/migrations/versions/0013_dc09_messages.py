"""SIA DC-09 messages received, so a panel's retransmission maps to the events it made

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import Id, Millis

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    # A DC-09 sequence number wraps at 9999 and a transmitter sends a message again until
    # it is ACKed, across a receiver's restart: each message received is kept with the
    # tenhub seq its events were stored under, so a copy finds them again.
    op.create_table(
        "dc09_messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("dc09_seq", sa.Integer, nullable=False),  # 0000-9999, as the panel numbered it
        sa.Column("token", sa.Text, nullable=False),  # ADM-CID, SIA-DCS, NULL
        sa.Column("data", sa.Text, nullable=False),  # the event data, decrypted
        sa.Column("panel_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),  # the tenhub seq of its first event
        sa.Column("events", sa.Integer, nullable=False),  # how many panel events it made
        sa.Column("panel_ts", Millis, nullable=False),  # the `ts` its events carry
        sa.Column("received_at", Millis, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("dc09_messages_by_seq", "dc09_messages", ["account", "dc09_seq", "received_at"])
