"""history chain: each ticket's events linked by hash, the newest hash kept on the ticket

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.types
from storage.history import event_hash

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("history_head", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
    # Chain the history written before this revision, in the order it was written.
    bind = op.get_bind()
    ticket = sa.table("ticket", sa.column("id", sa.Integer), sa.column("history_head"))
    event = sa.table(
        "ticket_event",
        sa.column("id", sa.Integer),
        sa.column("ticket_id", sa.Integer),
        sa.column("at", storage.types.UTCDateTime()),
        sa.column("actor"),
        sa.column("kind"),
        sa.column("data", sa.JSON),
        sa.column("prev_hash"),
        sa.column("hash"),
    )
    heads: dict[int, str] = {}
    rows = bind.execute(
        sa.select(
            event.c.id, event.c.ticket_id, event.c.at, event.c.actor, event.c.kind, event.c.data
        ).order_by(event.c.id)
    )
    for row in rows.all():
        prev = heads.get(row.ticket_id)
        digest = event_hash(
            prev,
            ticket_id=row.ticket_id,
            at=row.at,
            actor=row.actor,
            kind=row.kind,
            data=row.data or {},
        )
        bind.execute(event.update().where(event.c.id == row.id).values(prev_hash=prev, hash=digest))
        heads[row.ticket_id] = digest
    for ticket_id, head in heads.items():
        bind.execute(ticket.update().where(ticket.c.id == ticket_id).values(history_head=head))


def downgrade() -> None:
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.drop_column("history_head")
