"""Tables of the admin issue (kept apart so parallel work does not collide in models.py):
sign-in sessions, login attempts, the admin audit trail, sandbox chats, the webhook relay,
the tickets' counts by status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from storage.crypto import blind_index
from storage.models import _index, _json, _sealed, _ts


class AdminSession(SQLModel, table=True):
    """A signed-in browser: the cookie holds a random token, the table only its SHA-256."""

    __tablename__ = "admin_session"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="admin_user.id", index=True)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = _ts(default_now=True)
    last_seen_at: datetime = _ts(default_now=True)
    expires_at: datetime = _ts()


class LoginAttempt(SQLModel, table=True):
    """One try at the login form, kept to throttle guessing by account and by address."""

    __tablename__ = "login_attempt"
    __table_args__ = (
        sa.Index("ix_login_attempt_email_at", "email", "at"),
        sa.Index("ix_login_attempt_ip_at", "ip", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320)
    ip: str = Field(max_length=64)
    ok: bool = False
    at: datetime = _ts(default_now=True)


class AdminAudit(SQLModel, table=True):
    """Who looked at or did what in the admin pages and the API: views, reveals, exports."""

    __tablename__ = "admin_audit"
    __table_args__ = (sa.Index("ix_admin_audit_ticket_at", "ticket_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(default_now=True)
    actor: str = Field(max_length=120)  # admin:<id> | token:<name>
    action: str = Field(max_length=40)  # view_ticket | reveal_contacts | export_csv | ...
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id")
    detail: dict[str, Any] = _json()
    ip: str | None = Field(default=None, max_length=64)


class SandboxChat(SQLModel, table=True):
    """A made-up customer an admin chats as on /admin/sandbox."""

    __tablename__ = "sandbox_chat"
    __table_args__ = (
        sa.UniqueConstraint("channel", "address_index", name="uq_sandbox_chat_address"),
    )

    id: int | None = Field(default=None, primary_key=True)
    admin_user_id: int = Field(foreign_key="admin_user.id")
    channel: str = Field(max_length=16)
    tenant: str = Field(max_length=64)
    address: str = _sealed("sandbox_chat.address")  # whatsapp:+999… or a chat id ≥ 2**52
    address_index: str = _index()
    language: str = Field(default="en", max_length=8)
    created_at: datetime = _ts(default_now=True)


class WebhookRelay(SQLModel, table=True):
    """How far the webhook relay has read the ticket-event log (one row)."""

    __tablename__ = "webhook_relay"

    id: int = Field(default=1, primary_key=True)
    last_event_id: int = Field(default=0, sa_type=sa.BigInteger)
    # The log's end when the relay first ran: earlier events are history, never sent.
    floor_event_id: int = Field(default=0, sa_type=sa.BigInteger)
    updated_at: datetime = _ts(default_now=True)


class TicketStatusCount(SQLModel, table=True):
    """The number of tickets per (tenant, status), as a sum of deltas.

    Database triggers (migration 0008) add +1 / -1 rows whenever a ticket is inserted,
    deleted or changes tenant or status, whoever writes it; the clock folds the rows into
    one per (tenant, status) every 30 seconds (`admin_queries.compact_counts`). Appending
    rather than updating one counter row means concurrent transactions never wait on each
    other (or deadlock) over a shared row, and the admin list's counts cost a sum over a
    few rows instead of a count over a million tickets.
    """

    __tablename__ = "ticket_status_count"

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    status: str = Field(max_length=32)
    delta: int


@sa.event.listens_for(SandboxChat, "before_insert")
@sa.event.listens_for(SandboxChat, "before_update")
def _index_address(_mapper: Any, _connection: Any, target: SandboxChat) -> None:
    target.address_index = blind_index(target.address)
