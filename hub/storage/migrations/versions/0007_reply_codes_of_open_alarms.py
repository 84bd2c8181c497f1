"""a new reply code reads the phone's open alarms' codes, not every code it ever had

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import where

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    # A new code is the lowest none of the phone's open alarms uses. Found by joining
    # every code the phone was ever given to its alarm, it read months of them in the
    # field, inside the writer's transaction of each escalation step.
    op.add_column(
        "reply_codes",
        sa.Column("alarm_open", sa.Integer, nullable=False, server_default=sa.text("1")),
    )
    op.execute(
        "UPDATE reply_codes SET alarm_open = 0 WHERE alarm_id IN"
        " (SELECT id FROM alarms WHERE state IN ('resolved', 'cancelled'))"
    )
    op.create_index("reply_codes_by_alarm", "reply_codes", ["alarm_id"])
    op.create_index("reply_codes_open", "reply_codes", ["phone", "code"], **where("alarm_open = 1"))
    # However an alarm ends, its codes are free again.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION reply_codes_freed() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE reply_codes SET alarm_open = 0
                    WHERE alarm_id = NEW.id AND alarm_open = 1;
                RETURN NULL;
            END;
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER reply_codes_freed AFTER UPDATE OF state ON alarms FOR EACH ROW"
            " WHEN (NEW.state IN ('resolved', 'cancelled'))"
            " EXECUTE FUNCTION reply_codes_freed()"
        )
    else:
        op.execute(
            "CREATE TRIGGER reply_codes_freed AFTER UPDATE OF state ON alarms"
            " WHEN NEW.state IN ('resolved', 'cancelled')"
            " BEGIN"
            " UPDATE reply_codes SET alarm_open = 0 WHERE alarm_id = NEW.id AND alarm_open = 1;"
            " END"
        )

    # Every query by recipient asks for queued messages (outbox_queued_by_recipient)
    # or sends (outbox_sends): this index was only written, once per message queued.
    op.drop_index("outbox_by_recipient", table_name="outbox")
