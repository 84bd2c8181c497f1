"""escalation ladders in the database

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.storage.migrations.schema import Millis, no_rowid, where

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # The ladder an alarm follows, copied at raise time: a policy edited later does not
    # change the steps of an alarm already running.
    op.add_column("alarms", sa.Column("policy", sa.Text))
    op.add_column("alarms", sa.Column("ladder", sa.Text))
    op.add_column("alarms", sa.Column("next_step", sa.Integer))  # index of the next step
    op.add_column("alarms", sa.Column("next_step_at", Millis))  # when it falls due; NULL: none
    op.add_column(
        "alarms", sa.Column("duress", sa.Integer, nullable=False, server_default=sa.text("0"))
    )
    op.create_index("alarms_due", "alarms", ["next_step_at"], **where("next_step_at IS NOT NULL"))

    # One row per step and alarm, ever: the primary key makes "never twice" a constraint.
    op.create_table(
        "alarm_steps",
        sa.Column("alarm_id", sa.Text, sa.ForeignKey("alarms.id"), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),  # fired | skipped
        sa.Column("due_at", Millis, nullable=False),
        sa.Column("at", Millis, nullable=False),
        sa.Column("reason", sa.Text),
        sa.PrimaryKeyConstraint("alarm_id", "step"),
        **no_rowid(),
    )
