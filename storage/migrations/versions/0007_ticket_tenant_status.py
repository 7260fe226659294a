"""ticket (tenant, status) index: the admin list's counts per status for one business

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 06:30:00

bench/scale.py measured the count of one tenant's tickets by status at a million tickets:
40 ms p95 without this index, 3.5 ms with it.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.create_index("ix_ticket_tenant_status", ["tenant", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.drop_index("ix_ticket_tenant_status")
