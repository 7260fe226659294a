"""admin: sessions, login attempts, audit, sandbox chats, webhook relay; list indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 12:00:00

The ticket indexes serve the admin list and the API, sorted by deadline with keyset
pagination: `(due_at, id)` for everything, partial `(due_at, id)` and `(tenant, due_at,
id)` over the active statuses (the default view, which stays a short range scan when a
million closed tickets lie in the same table), assignee, the received and closed dates
the reports and charts count over; and contact values for the search by email or phone.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Keep in step with storage.admin_queries.ACTIVE_SQL (the planner matches the text).
ACTIVE = "status IN ('awaiting_verification', 'open', 'in_progress', 'awaiting_requester')"


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, storage.types.UTCDateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "admin_session",
        _str("token_hash", 64),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _str("csrf_token", 64),
        _ts("created_at"),
        _ts("last_seen_at"),
        _ts("expires_at"),
        sa.ForeignKeyConstraint(["user_id"], ["admin_user.id"]),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_admin_session_user_id", "admin_session", ["user_id"])

    op.create_table(
        "login_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        _str("email", 320),
        _str("ip", 64),
        sa.Column("ok", sa.Boolean(), nullable=False),
        _ts("at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_login_attempt_email_at", "login_attempt", ["email", "at"])
    op.create_index("ix_login_attempt_ip_at", "login_attempt", ["ip", "at"])

    op.create_table(
        "admin_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        _ts("at"),
        _str("actor", 120),
        _str("action", 40),
        sa.Column("ticket_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        _str("ip", 64, nullable=True),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_admin_audit_ticket_at", "admin_audit", ["ticket_id", "at"])

    op.create_table(
        "sandbox_chat",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("admin_user_id", sa.Integer(), nullable=False),
        _str("channel", 16),
        _str("tenant", 64),
        _str("address", 64),
        _str("language", 8),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["admin_user_id"], ["admin_user.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("channel", "address"),
    )

    op.create_table(
        "webhook_relay",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("floor_event_id", sa.BigInteger(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id"),
    )

    active = sa.text(ACTIVE)
    op.create_index("ix_admin_ticket_due", "ticket", ["due_at", "id"])
    op.create_index(
        "ix_admin_ticket_active_due",
        "ticket",
        ["due_at", "id"],
        postgresql_where=active,
        sqlite_where=active,
    )
    op.create_index(
        "ix_admin_ticket_active_tenant_due",
        "ticket",
        ["tenant", "due_at", "id"],
        postgresql_where=active,
        sqlite_where=active,
    )
    op.create_index("ix_admin_ticket_assignee_due", "ticket", ["assignee_user_id", "due_at", "id"])
    op.create_index("ix_admin_ticket_received", "ticket", ["received_at"])
    op.create_index("ix_admin_ticket_closed", "ticket", ["closed_at"])
    op.create_index("ix_admin_contact_value", "contact_identity", ["value"])
    op.create_index("ix_admin_inbound_sender", "inbound_message", ["channel", "sender", "id"])
    op.create_index("ix_admin_suppression_tenant", "suppression", ["tenant", "id"])


def downgrade() -> None:
    for name, table in (
        ("ix_admin_suppression_tenant", "suppression"),
        ("ix_admin_inbound_sender", "inbound_message"),
        ("ix_admin_contact_value", "contact_identity"),
        ("ix_admin_ticket_closed", "ticket"),
        ("ix_admin_ticket_received", "ticket"),
        ("ix_admin_ticket_assignee_due", "ticket"),
        ("ix_admin_ticket_active_tenant_due", "ticket"),
        ("ix_admin_ticket_active_due", "ticket"),
        ("ix_admin_ticket_due", "ticket"),
    ):
        op.drop_index(name, table_name=table)
    op.drop_table("webhook_relay")
    op.drop_table("sandbox_chat")
    op.drop_index("ix_admin_audit_ticket_at", table_name="admin_audit")
    op.drop_table("admin_audit")
    op.drop_index("ix_login_attempt_ip_at", table_name="login_attempt")
    op.drop_index("ix_login_attempt_email_at", table_name="login_attempt")
    op.drop_table("login_attempt")
    op.drop_index("ix_admin_session_user_id", table_name="admin_session")
    op.drop_table("admin_session")
