"""conversation.written_to: the business number a WhatsApp customer last wrote to

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22 09:30:00

A business may have several WhatsApp numbers (a chain in Pakistan and the Gulf); what staff
and the clock send a customer later goes from the number that customer wrote to, not from
the business's first one. Empty for older conversations until their customer writes again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("conversation", sa.Column("written_to", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversation") as batch_op:
        batch_op.drop_column("written_to")
