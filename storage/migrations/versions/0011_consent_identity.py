"""consent_record.identity: whom a cookie opt-out applies to on the business's website

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 03:30:00

A cookie opt-out now asks for the email address or phone number the customer uses with the
business (or is skipped); the ledger line keeps it, sealed like the other personal data
(storage/crypto.py, `SEALED_COLUMNS`). NULL for older lines and when none was given.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consent_record", sa.Column("identity", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("consent_record") as batch_op:
        batch_op.drop_column("identity")
