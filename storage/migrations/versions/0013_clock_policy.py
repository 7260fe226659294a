"""clock_policy: the reminder policy each tenant's open tickets were planned under

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 13:30:00

A fingerprint per tenant of what planning reads from its policy (reminder offsets, the
escalation interval, expiry of unverified requests, pausing, time zone and calendar). A
process whose tenant file differs re-plans that tenant's open tickets at its first pass.
Empty after this revision: the first pass after upgrading re-plans every open ticket once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clock_policy",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("changed_at", storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant"),
    )


def downgrade() -> None:
    op.drop_table("clock_policy")
