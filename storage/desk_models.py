"""Tables of the staff desk (kept apart so parallel work does not collide in models.py):
cards in the staff chat, force-reply prompts, files delivered to customers and their links."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from storage.models import utcnow
from storage.types import UTCDateTime


def _ts(*, nullable: bool = False, default_now: bool = False) -> Any:
    """A UTC timestamp column."""
    return Field(
        default_factory=utcnow if default_now else None,
        sa_column=sa.Column(UTCDateTime(), nullable=nullable),
    )


def _big(*, nullable: bool = True) -> Any:
    """A Telegram id (chats, users, messages): 64-bit."""
    return Field(default=None, sa_column=sa.Column(sa.BigInteger(), nullable=nullable))


class DeskChat(SQLModel, table=True):
    """What the desk learnt about a staff chat: whether it is a forum (topics per ticket)."""

    __tablename__ = "desk_chat"

    chat_id: int = Field(
        sa_column=sa.Column(sa.BigInteger(), primary_key=True, autoincrement=False)
    )
    forum: bool | None = None  # None: not known yet, so the first card tries a topic
    updated_at: datetime = _ts(default_now=True)


class DeskCard(SQLModel, table=True):
    """A message in a staff chat that shows one ticket (a card) or several (a digest).

    `outbox_id` is the queued row that will create or next edit the message: while that row
    is pending, a change rewrites its payload instead of queueing another call. `dirty` is
    set when a change came while the row was in flight; the send hook then edits again.
    """

    __tablename__ = "desk_card"
    __table_args__ = (sa.Index("ix_desk_card_message", "chat_id", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    chat_id: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    kind: str = Field(default="ticket", max_length=16)  # ticket | digest
    message_id: int | None = _big()
    thread_id: int | None = _big()
    outbox_id: int | None = None
    dirty: bool = False
    full: bool = False  # a digest that takes no more tickets
    created_at: datetime = _ts(default_now=True)


class DeskCardTicket(SQLModel, table=True):
    """Which tickets a card shows, in order."""

    __tablename__ = "desk_card_ticket"

    card_id: int = Field(foreign_key="desk_card.id", primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", primary_key=True, index=True)
    position: int = 0


class DeskPrompt(SQLModel, table=True):
    """A force-reply question a button asked a staff member; answered once or it times out."""

    __tablename__ = "desk_prompt"
    __table_args__ = (sa.Index("ix_desk_prompt_message", "chat_id", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    ticket_id: int = Field(foreign_key="ticket.id")
    chat_id: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    user_id: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    action: str = Field(max_length=16)
    message_id: int | None = _big()
    created_at: datetime = _ts(default_now=True)
    expires_at: datetime = _ts()
    closed_at: datetime | None = _ts(nullable=True)
    outcome: str | None = Field(default=None, max_length=16)  # done | cancelled | expired | ...


class DeskFile(SQLModel, table=True):
    """A file staff sent to a customer, kept encrypted (AES-GCM) as the record of delivery."""

    __tablename__ = "desk_file"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    tenant: str = Field(max_length=64)
    seal_id: str = Field(max_length=32, unique=True)  # bound into the ciphertext
    name: str = Field(max_length=200)
    content_type: str = Field(max_length=100)
    size: int
    sha256: str = Field(max_length=64)
    sealed: bytes = Field(sa_column=sa.Column(sa.LargeBinary(), nullable=False))
    telegram_file_id: str | None = Field(default=None, max_length=200)
    uploaded_by: int | None = _big()
    created_at: datetime = _ts(default_now=True)


class DownloadLink(SQLModel, table=True):
    """A signed, expiring, count-limited link to one file; only the token's hash is kept."""

    __tablename__ = "download_link"

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="desk_file.id", index=True)
    ticket_id: int = Field(foreign_key="ticket.id")
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = _ts(default_now=True)
    expires_at: datetime = _ts()
    max_downloads: int
    downloads: int = 0
    revoked_at: datetime | None = _ts(nullable=True)


class DownloadRecord(SQLModel, table=True):
    """One download through a link: when, and from where (network masked)."""

    __tablename__ = "download_record"

    id: int | None = Field(default=None, primary_key=True)
    link_id: int = Field(foreign_key="download_link.id", index=True)
    at: datetime = _ts(default_now=True)
    client: str = Field(default="", max_length=64)
    user_agent: str = Field(default="", max_length=200)
