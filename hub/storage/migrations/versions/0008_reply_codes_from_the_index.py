"""a new reply code is found in the index alone, however many alarms a phone has open

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

from hub.storage.migrations.schema import where

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    # In a storm a zone's patrol phones have hundreds of open alarms, and each new one
    # asked for their codes: the index held (phone, code) only, so SQLite read each
    # code's row to check alarm_open, and the hub gathered every code to find a gap.
    # With alarm_open in the index the count, the highest and the first gap are read
    # from the index alone.
    op.drop_index("reply_codes_open", table_name="reply_codes")
    op.create_index(
        "reply_codes_open",
        "reply_codes",
        ["phone", "code", "alarm_open"],
        **where("alarm_open = 1"),
    )
