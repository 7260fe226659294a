"""staff desk: cards in the staff chat, force-reply prompts, delivered files and their links

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, storage.types.UTCDateTime(timezone=True), nullable=nullable)


def _text(name: str, length: int, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "desk_chat",
        sa.Column("chat_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("forum", sa.Boolean(), nullable=True),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("chat_id"),
    )
    op.create_table(
        "desk_card",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("tenant", 64),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        _text("kind", 16),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("thread_id", sa.BigInteger(), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("dirty", sa.Boolean(), nullable=False),
        sa.Column("full", sa.Boolean(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_desk_card_message", "desk_card", ["chat_id", "message_id"])
    op.create_table(
        "desk_card_ticket",
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["card_id"], ["desk_card.id"]),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"]),
        sa.PrimaryKeyConstraint("card_id", "ticket_id"),
    )
    op.create_index("ix_desk_card_ticket_ticket_id", "desk_card_ticket", ["ticket_id"])
    op.create_table(
        "desk_prompt",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("tenant", 64),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        _text("action", 16),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("closed_at", nullable=True),
        _text("outcome", 16, nullable=True),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_desk_prompt_message", "desk_prompt", ["chat_id", "message_id"])
    op.create_table(
        "desk_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        _text("tenant", 64),
        _text("seal_id", 32),
        _text("name", 200),
        _text("content_type", 100),
        sa.Column("size", sa.Integer(), nullable=False),
        _text("sha256", 64),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        _text("telegram_file_id", 200, nullable=True),
        sa.Column("uploaded_by", sa.BigInteger(), nullable=True),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("seal_id"),
    )
    op.create_index("ix_desk_file_ticket_id", "desk_file", ["ticket_id"])
    op.create_table(
        "download_link",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        _text("token_hash", 64),
        _ts("created_at"),
        _ts("expires_at"),
        sa.Column("max_downloads", sa.Integer(), nullable=False),
        sa.Column("downloads", sa.Integer(), nullable=False),
        _ts("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(["file_id"], ["desk_file.id"]),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_download_link_file_id", "download_link", ["file_id"])
    op.create_table(
        "download_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("link_id", sa.Integer(), nullable=False),
        _ts("at"),
        _text("client", 64),
        _text("user_agent", 200),
        sa.ForeignKeyConstraint(["link_id"], ["download_link.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_download_record_link_id", "download_record", ["link_id"])


def downgrade() -> None:
    op.drop_index("ix_download_record_link_id", table_name="download_record")
    op.drop_table("download_record")
    op.drop_index("ix_download_link_file_id", table_name="download_link")
    op.drop_table("download_link")
    op.drop_index("ix_desk_file_ticket_id", table_name="desk_file")
    op.drop_table("desk_file")
    op.drop_index("ix_desk_prompt_message", table_name="desk_prompt")
    op.drop_table("desk_prompt")
    op.drop_index("ix_desk_card_ticket_ticket_id", table_name="desk_card_ticket")
    op.drop_table("desk_card_ticket")
    op.drop_index("ix_desk_card_message", table_name="desk_card")
    op.drop_table("desk_card")
    op.drop_table("desk_chat")
