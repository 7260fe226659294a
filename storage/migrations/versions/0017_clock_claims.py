"""The clock claims reminders in sets: no foreign key on claims, assignees in the open index

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 00:00:00

A pass that finds thousands of reminders due at once (a catch-up after downtime, a bulk
import) claims them with one statement (`storage.reminders.plan_groups`). On PostgreSQL
the foreign key from `reminder_sent.ticket_id` to `ticket.id` checked each claim by
locking its ticket row (FOR KEY SHARE), which writes that row's page: 0.62 s of a 0.96 s
claim of 24,800 reminders, most of them pages first written since the last checkpoint and
so logged whole (bench/README.md, session 12). A claim is only ever made for a ticket the
same transaction has just read, and deleting a ticket deletes its claims
(`bot.retention.delete_ticket`): the key goes, on both databases.

The claims' recipients depend on each ticket's assignee, which the open tickets' index
(`ix_ticket_open_clock`, migration 0016) now includes, so that PostgreSQL still reads
the open tickets from that index alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

ACTIVE = "('awaiting_verification', 'open', 'in_progress', 'awaiting_requester')"
INDEX = "ix_ticket_open_clock"
KEYS = "tenant, status, due_at, id"
INCLUDED = (
    "received_at, clock_started_at, history_due_set_at, history_status, history_status_at, "
    "updated_at"
)
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}  # SQLite: unnamed
SQLITE_KEY = "fk_reminder_sent_ticket_id_ticket"


def _open_index(included: str) -> None:
    op.execute(f"DROP INDEX {INDEX}")
    op.execute(f"CREATE INDEX {INDEX} ON ticket ({KEYS}) INCLUDE ({included}) WHERE status IN {ACTIVE}")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for key in sa.inspect(bind).get_foreign_keys("reminder_sent"):
            if key["referred_table"] == "ticket" and key["name"]:
                op.drop_constraint(key["name"], "reminder_sent", type_="foreignkey")
        _open_index(f"{INCLUDED}, assignee_user_id")
        return
    with op.batch_alter_table("reminder_sent", recreate="always", naming_convention=NAMING) as batch:
        batch.drop_constraint(SQLITE_KEY, type_="foreignkey")


def downgrade() -> None:
    op.execute("DELETE FROM reminder_sent WHERE ticket_id NOT IN (SELECT id FROM ticket)")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.create_foreign_key(
            "reminder_sent_ticket_id_fkey", "reminder_sent", "ticket", ["ticket_id"], ["id"]
        )
        _open_index(INCLUDED)
        return
    with op.batch_alter_table("reminder_sent", recreate="always") as batch:
        batch.create_foreign_key(SQLITE_KEY, "ticket", ["ticket_id"], ["id"])
