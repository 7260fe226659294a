"""Planning in sets reads open tickets from an index of their own; a closed ticket is never
left for the clock to plan

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 00:00:00

Planning all open tickets in sets (`storage.reminders.plan_groups`) reads, for each, the
few columns its next look depends on. On PostgreSQL those came from the ticket rows: with
a million tickets, 100,000 open, a scan of the whole table (200 MB, 0.55 s of a 1.5 s pass;
bench/README.md, session 10). `ix_ticket_open_clock` holds them for the open tickets alone
(≈ 11 MB at 100,000 open), read by an index-only scan. SQLite reads each open ticket by id
(0.15 s at the same size): it has no index-only scan of included columns, and an index
with them all as keys would cost every ticket write on the one writer it has.

A ticket that closes was unplanned (NULL) for the clock's next pass to give it "never";
the triggers now give it "never" at once, so an unplanned ticket is always an open one
(the index's condition) and a closing in bulk costs the clock nothing.
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


def _sqlite_replan(closed_is_never: bool) -> str:
    value = f"CASE WHEN NEW.status IN {CLOSED} THEN {NEVER['sqlite']} END"
    return f"""CREATE TRIGGER ticket_clock_replan AFTER UPDATE OF status, due_at ON ticket
    WHEN OLD.status IS NOT NEW.status OR OLD.due_at IS NOT NEW.due_at BEGIN
        UPDATE ticket_clock SET next_at = {value if closed_is_never else "NULL"}
        WHERE ticket_id = NEW.id;
    END"""


def _postgres_change(closed_is_never: bool) -> str:
    value = f"CASE WHEN NEW.status IN {CLOSED} THEN timestamptz {NEVER['postgresql']} END"
    return f"""CREATE OR REPLACE FUNCTION ticket_clock_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO ticket_clock (ticket_id, next_at) VALUES (NEW.id, {value});
        ELSE
            UPDATE ticket_clock SET next_at = {value if closed_is_never else "NULL"}
            WHERE ticket_id = NEW.id;
        END IF;
        RETURN NULL;
    END $$"""


def _triggers(closed_is_never: bool) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_postgres_change(closed_is_never))
    else:
        op.execute("DROP TRIGGER ticket_clock_replan")
        op.execute(_sqlite_replan(closed_is_never))


def upgrade() -> None:
    _triggers(closed_is_never=True)
    dialect = op.get_bind().dialect.name
    op.execute(
        f"UPDATE ticket_clock SET next_at = {NEVER[dialect]} WHERE next_at IS NULL "
        f"AND ticket_id IN (SELECT id FROM ticket WHERE status IN {CLOSED})"
    )
    if dialect == "postgresql":
        op.execute(
            f"CREATE INDEX {INDEX} ON ticket (tenant, status, due_at, id) "
            "INCLUDE (received_at, clock_started_at, history_due_set_at, history_status, "
            f"history_status_at, updated_at) WHERE status IN {ACTIVE}"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX {INDEX}")
    _triggers(closed_is_never=False)
