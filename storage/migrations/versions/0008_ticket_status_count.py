"""ticket_status_count: counts per (tenant, status) kept by triggers

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 09:00:00

The admin list shows how many tickets each status holds. Counting them took 57–214 ms at a
million tickets (bench/README.md, section 3); a sum over this table's few rows does not
depend on the number of tickets. The triggers append +1 / -1 rows (never update a shared
row, so concurrent writers do not queue on it); `admin_queries.compact_counts` folds them.
On PostgreSQL, CREATE TRIGGER locks `ticket` against writes until this migration commits,
so the initial counts and the triggers agree. A later migration that rebuilds `ticket` on
SQLite (`batch_alter_table` with a column change copies the table) must create the
triggers again: `tests/test_admin_list.py` checks the counts on a migrated database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_SQLITE = [
    """CREATE TRIGGER ticket_count_insert AFTER INSERT ON ticket BEGIN
        INSERT INTO ticket_status_count (tenant, status, delta)
        VALUES (NEW.tenant, NEW.status, 1);
    END""",
    """CREATE TRIGGER ticket_count_delete AFTER DELETE ON ticket BEGIN
        INSERT INTO ticket_status_count (tenant, status, delta)
        VALUES (OLD.tenant, OLD.status, -1);
    END""",
    """CREATE TRIGGER ticket_count_update AFTER UPDATE OF tenant, status ON ticket
    WHEN OLD.tenant IS NOT NEW.tenant OR OLD.status IS NOT NEW.status BEGIN
        INSERT INTO ticket_status_count (tenant, status, delta)
        VALUES (OLD.tenant, OLD.status, -1), (NEW.tenant, NEW.status, 1);
    END""",
]

_POSTGRES = [
    """CREATE FUNCTION ticket_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' OR TG_OP = 'DELETE' THEN
            INSERT INTO ticket_status_count (tenant, status, delta)
            VALUES (OLD.tenant, OLD.status, -1);
        END IF;
        IF TG_OP = 'UPDATE' OR TG_OP = 'INSERT' THEN
            INSERT INTO ticket_status_count (tenant, status, delta)
            VALUES (NEW.tenant, NEW.status, 1);
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER ticket_count_insert_delete AFTER INSERT OR DELETE ON ticket
    FOR EACH ROW EXECUTE FUNCTION ticket_count_change()""",
    """CREATE TRIGGER ticket_count_update AFTER UPDATE OF tenant, status ON ticket
    FOR EACH ROW
    WHEN (OLD.tenant IS DISTINCT FROM NEW.tenant OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION ticket_count_change()""",
]


def upgrade() -> None:
    op.create_table(
        "ticket_status_count",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _POSTGRES if postgres else _SQLITE:
        op.execute(statement)
    op.execute(
        "INSERT INTO ticket_status_count (tenant, status, delta) "
        "SELECT tenant, status, COUNT(*) FROM ticket GROUP BY tenant, status"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ticket_count_update ON ticket")
        op.execute("DROP TRIGGER ticket_count_insert_delete ON ticket")
        op.execute("DROP FUNCTION ticket_count_change()")
    else:
        for name in ("ticket_count_update", "ticket_count_delete", "ticket_count_insert"):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("ticket_status_count")
