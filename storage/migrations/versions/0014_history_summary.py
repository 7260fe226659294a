"""ticket.history_status, history_status_at, history_due_set_at: the clock's facts on the row

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 23:30:00

Planning a ticket's reminders needs two facts from its history: since when it has been in
its status, and when its deadline was last set. Kept on the row beside `history_head` by
every new event, so that the clock no longer reads and opens each ticket's sealed history.
Empty after this revision (the histories are sealed: SQL cannot read them); the clock fills
a ticket's facts the next time it plans it, from the history, once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COLUMNS = ("history_status", "history_status_at", "history_due_set_at")


def upgrade() -> None:
    op.add_column("ticket", sa.Column("history_status", sa.String(length=32), nullable=True))
    for name in COLUMNS[1:]:
        op.add_column(
            "ticket", sa.Column(name, storage.types.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    # in place (SQLite 3.35): a batch rebuild of `ticket` would lose its triggers (0008)
    for name in reversed(COLUMNS):
        op.execute(f"ALTER TABLE ticket DROP COLUMN {name}")
