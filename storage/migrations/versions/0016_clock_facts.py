"""The clock holds open tickets only; planning in sets reads them from an index of their own

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 00:00:00

A closed ticket is never looked at again, yet kept a `ticket_clock` row ("never"): at a
million tickets, 100,000 open, nine rows in ten. Planning every open ticket at once
(`storage.reminders.plan_groups`, after a policy change) joined all million of them to
the open tickets, and wrote its looks into a table ten times the size of what it
changed. The triggers now give a ticket a row while it is open and take it away when it
closes (reopened, it gets one again, unplanned), so every row is an open ticket's.

On PostgreSQL the planning columns of open tickets came from a scan of the whole ticket
table (200 MB at a million tickets, 0.55 s of a 1.5 s pass; bench/README.md, session 10):
`ix_ticket_open_clock` holds them for the open tickets alone (≈ 11 MB at 100,000 open),
read by an index-only scan. SQLite reads each open ticket by id (0.15 s at that size): it
has no included columns, and an index with them all as keys would cost every ticket write
on the one writer it has.
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

ACTIVE = "('awaiting_verification', 'open', 'in_progress', 'awaiting_requester')"
CLOSED = "('resolved', 'rejected', 'cancelled', 'expired')"  # storage.enums.CLOSED_STATUSES
NEVER = {"sqlite": "'9999-01-01 00:00:00.000000'", "postgresql": "'9999-01-01 00:00:00+00'"}
INDEX = "ix_ticket_open_clock"
REPLAN = "AFTER UPDATE OF status, due_at ON ticket"

# Open: a row, unplanned (NULL) for the next pass; closed: none.
_SQLITE = [
    f"""CREATE TRIGGER ticket_clock_insert AFTER INSERT ON ticket
    WHEN NEW.status NOT IN {CLOSED} BEGIN
        INSERT INTO ticket_clock (ticket_id, next_at) VALUES (NEW.id, NULL);
    END""",
    f"""CREATE TRIGGER ticket_clock_replan {REPLAN}
    WHEN OLD.status IS NOT NEW.status OR OLD.due_at IS NOT NEW.due_at BEGIN
        DELETE FROM ticket_clock WHERE ticket_id = NEW.id AND NEW.status IN {CLOSED};
        INSERT INTO ticket_clock (ticket_id, next_at)
        SELECT NEW.id, NULL WHERE NEW.status NOT IN {CLOSED}
        ON CONFLICT (ticket_id) DO UPDATE SET next_at = NULL;
    END""",
]
_POSTGRES = f"""CREATE OR REPLACE FUNCTION ticket_clock_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.status IN {CLOSED} THEN
            DELETE FROM ticket_clock WHERE ticket_id = NEW.id;
        ELSE
            INSERT INTO ticket_clock (ticket_id, next_at) VALUES (NEW.id, NULL)
            ON CONFLICT (ticket_id) DO UPDATE SET next_at = NULL;
        END IF;
        RETURN NULL;
    END $$"""

# Migration 0015's: every ticket a row, a closed one "never" when filed, unplanned on a change.
_SQLITE_BEFORE = [
    f"""CREATE TRIGGER ticket_clock_insert AFTER INSERT ON ticket BEGIN
        INSERT INTO ticket_clock (ticket_id, next_at)
        VALUES (NEW.id, CASE WHEN NEW.status IN {CLOSED} THEN {NEVER["sqlite"]} END);
    END""",
    f"""CREATE TRIGGER ticket_clock_replan {REPLAN}
    WHEN OLD.status IS NOT NEW.status OR OLD.due_at IS NOT NEW.due_at BEGIN
        UPDATE ticket_clock SET next_at = NULL WHERE ticket_id = NEW.id;
    END""",
]
_POSTGRES_BEFORE = f"""CREATE OR REPLACE FUNCTION ticket_clock_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO ticket_clock (ticket_id, next_at) VALUES (NEW.id,
                CASE WHEN NEW.status IN {CLOSED} THEN timestamptz {NEVER["postgresql"]} END);
        ELSE
            UPDATE ticket_clock SET next_at = NULL WHERE ticket_id = NEW.id;
        END IF;
        RETURN NULL;
    END $$"""


def _triggers(sqlite: list[str], postgres: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(postgres)
        return
    op.execute("DROP TRIGGER ticket_clock_insert")
    op.execute("DROP TRIGGER ticket_clock_replan")
    for statement in sqlite:
        op.execute(statement)


def upgrade() -> None:
    _triggers(_SQLITE, _POSTGRES)
    op.execute(
        f"DELETE FROM ticket_clock WHERE ticket_id IN (SELECT id FROM ticket WHERE status IN {CLOSED})"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE INDEX {INDEX} ON ticket (tenant, status, due_at, id) "
            "INCLUDE (received_at, clock_started_at, history_due_set_at, history_status, "
            f"history_status_at, updated_at) WHERE status IN {ACTIVE}"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(f"DROP INDEX {INDEX}")
    _triggers(_SQLITE_BEFORE, _POSTGRES_BEFORE)
    op.execute(
        f"INSERT INTO ticket_clock (ticket_id, next_at) SELECT id, {NEVER[dialect]} "
        f"FROM ticket WHERE status IN {CLOSED}"
    )
