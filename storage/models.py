"""The tables: tickets and their history, people and their contacts, messages both ways."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from storage.crypto import SealedJSON, SealedText, blind_index
from storage.enums import OutboxStatus, TicketStatus
from storage.types import UTCDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(*, nullable: bool = False, index: bool = False, default_now: bool = False) -> Any:
    """A UTC timestamp column."""
    return Field(
        default_factory=utcnow if default_now else None,
        sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index),
    )


def _json() -> Any:
    return Field(default_factory=dict, sa_column=sa.Column(sa.JSON(), nullable=False))


def _sealed_json(context: str) -> Any:
    """A JSON column stored encrypted (storage/crypto.py)."""
    return Field(default_factory=dict, sa_column=sa.Column(SealedJSON(context), nullable=False))


def _index() -> Any:
    """The blind index of a sealed column (storage/crypto.py): what equality lookups,
    grouping and unique keys use; kept in step by `_index_routing` below."""
    return Field(default="", max_length=64)


def _sealed(context: str, *, nullable: bool = False) -> Any:
    """A text column stored encrypted (storage/crypto.py)."""
    return Field(
        default=None if nullable else ...,
        sa_column=sa.Column(SealedText(context), nullable=nullable),
    )


class Requester(SQLModel, table=True):
    """A person who asked one business for something; identities hang off it."""

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64, index=True)
    display_name: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, max_length=8)
    customer_ref: str | None = Field(default=None, max_length=100)
    created_at: datetime = _ts(default_now=True)


class ContactIdentity(SQLModel, table=True):
    """A way to reach or recognise a requester: a WhatsApp number, Telegram id or email."""

    __tablename__ = "contact_identity"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "kind", "value_index", name="uq_contact_identity_index"),
        sa.Index("ix_contact_identity_value_index", "value_index"),
    )

    id: int | None = Field(default=None, primary_key=True)
    requester_id: int = Field(foreign_key="requester.id", index=True)
    tenant: str = Field(max_length=64)
    kind: str = Field(max_length=16)  # whatsapp | telegram | email | phone
    value: str = _sealed("contact_identity.value")
    # The blind index of `value` (storage/crypto.py): what lookups and the unique key use.
    value_index: str = Field(default="", max_length=64)
    verified_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(default_now=True)


class TicketCounter(SQLModel, table=True):
    """The last reference number handed out per tenant and year."""

    __tablename__ = "ticket_counter"

    tenant: str = Field(max_length=64, primary_key=True)
    year: int = Field(primary_key=True)
    last: int = 0


class Ticket(SQLModel, table=True):
    """One privacy request and where it stands against its deadline."""

    __table_args__ = (
        sa.UniqueConstraint("tenant", "year", "seq"),
        sa.Index("ix_ticket_status_due", "status", "due_at", "id"),
        sa.Index("ix_ticket_tenant_due", "tenant", "due_at", "id"),
        sa.Index("ix_ticket_tenant_status", "tenant", "status"),  # counts per status
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    ref: str = Field(max_length=40, unique=True)
    year: int
    seq: int
    kind: str = Field(max_length=32)
    status: str = Field(default=TicketStatus.OPEN, max_length=32)
    channel: str = Field(max_length=16)
    language: str = Field(default="en", max_length=8)
    requester_id: int | None = Field(default=None, foreign_key="requester.id", index=True)
    details: str | None = _sealed("ticket.details", nullable=True)
    received_at: datetime = _ts(default_now=True)
    verified_at: datetime | None = _ts(nullable=True)
    clock_started_at: datetime | None = _ts(nullable=True)
    due_at: datetime | None = _ts(nullable=True)
    closed_at: datetime | None = _ts(nullable=True)
    assignee_user_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    assignee_name: str | None = Field(default=None, max_length=200)
    staff_message_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    staff_thread_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    created_at: datetime = _ts(default_now=True)
    updated_at: datetime = _ts(default_now=True)
    # The hash of the newest event: the end of the tamper-evident chain (storage/history.py).
    history_head: str | None = Field(default=None, max_length=64)
    # What the clock reads from the history, kept beside its head by every event
    # (`storage.history.Summary`): the status the history last recorded and since when, and
    # when a deadline was last set. history_status NULL: not known (a ticket older than
    # migration 0014); the clock then reads the history once and fills them in.
    history_status: str | None = Field(default=None, max_length=32)
    history_status_at: datetime | None = _ts(nullable=True)
    history_due_set_at: datetime | None = _ts(nullable=True)


class TicketEvent(SQLModel, table=True):
    """An append-only line of a ticket's history: who did what, when."""

    __tablename__ = "ticket_event"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    at: datetime = _ts(default_now=True)
    actor: str = Field(max_length=120)  # customer | system | staff:<telegram id> | admin:<id>
    kind: str = Field(max_length=40)
    data: dict[str, Any] = _sealed_json("ticket_event.data")
    prev_hash: str | None = Field(default=None, max_length=64)
    hash: str | None = Field(default=None, max_length=64)


class Conversation(SQLModel, table=True):
    """Where one customer stands in the dialogue with one business on one channel."""

    __table_args__ = (
        sa.UniqueConstraint("channel", "address_index", "tenant", name="uq_conversation_address"),
        # a requester's conversations: where the clock and the desk write to a customer
        sa.Index("ix_conversation_requester", "requester_id", "channel", "tenant"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    address: str = _sealed("conversation.address")  # whatsapp:+E164 or the Telegram chat id
    address_index: str = _index()
    tenant: str = Field(default="", max_length=64)  # "" until the business is known
    requester_id: int | None = Field(default=None, foreign_key="requester.id")
    step: str = Field(default="start", max_length=40)
    state: dict[str, Any] = _sealed_json("conversation.state")
    language: str | None = Field(default=None, max_length=8)
    last_inbound_at: datetime | None = _ts(nullable=True)
    # WhatsApp: the business number the customer last wrote to (whatsapp:+E164); what
    # is sent to them later (staff relay, reminders) goes from it
    written_to: str | None = Field(default=None, max_length=64)
    updated_at: datetime = _ts(default_now=True)


class InboundMessage(SQLModel, table=True):
    """A webhook's payload, stored before it is acknowledged and processed at least once."""

    __tablename__ = "inbound_message"
    __table_args__ = (
        sa.UniqueConstraint("channel", "provider_id"),
        sa.Index("ix_inbound_pending", "processed_at", "next_attempt_at", "id"),
        sa.Index("ix_inbound_sender", "channel", "sender_index", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    provider_id: str = Field(max_length=64)  # Twilio MessageSid / Telegram update_id
    kind: str = Field(default="message", max_length=16)  # message | status | callback
    tenant: str | None = Field(default=None, max_length=64)
    # The blind index of who sent it, for per-sender order and rate limits; the address
    # itself is only in the sealed payload.
    sender_index: str = Field(default="", max_length=64)
    payload: dict[str, Any] = _sealed_json("inbound_message.payload")
    received_at: datetime = _ts(default_now=True)
    processed_at: datetime | None = _ts(nullable=True)
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(nullable=True)
    locked_until: datetime | None = _ts(nullable=True)
    last_error: str | None = Field(default=None, max_length=500)


class OutboundMessage(SQLModel, table=True):
    """A message waiting for (or done with) delivery: the durable outbox."""

    __tablename__ = "outbound_message"
    __table_args__ = (
        sa.Index("ix_outbound_due", "status", "next_attempt_at", "id"),
        sa.Index("ix_outbound_recipient", "channel", "recipient_index", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    tenant: str | None = Field(default=None, max_length=64)
    recipient: str = _sealed("outbound_message.recipient")
    recipient_index: str = _index()
    payload: dict[str, Any] = _sealed_json("outbound_message.payload")
    status: str = Field(default=OutboxStatus.PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _ts(default_now=True)
    locked_until: datetime | None = _ts(nullable=True)
    locked_by: str | None = Field(default=None, max_length=64)
    provider_id: str | None = Field(default=None, max_length=64)
    provider_status: str | None = Field(default=None, max_length=32)
    dedupe_key: str | None = Field(default=None, max_length=200, unique=True)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id", index=True)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = _ts(default_now=True)
    sent_at: datetime | None = _ts(nullable=True)


class ConsentRecord(SQLModel, table=True):
    """The consent ledger: who said yes or no to what, when, where and in which words."""

    __tablename__ = "consent_record"

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64, index=True)
    requester_id: int | None = Field(default=None, foreign_key="requester.id")
    channel: str = Field(max_length=16)
    address: str = _sealed("consent_record.address")
    address_index: str = _index()
    category: str = Field(max_length=40)  # marketing | cookies:analytics | ...
    # Cookies: the email address or phone number the customer said they use with the
    # business (its website), as given and not verified; NULL when none was given.
    identity: str | None = _sealed("consent_record.identity", nullable=True)
    granted: bool
    words: str | None = Field(default=None, max_length=200)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id")
    at: datetime = _ts(default_now=True)


class Suppression(SQLModel, table=True):
    """Someone who must not be contacted for a purpose: the current state of the ledger."""

    __table_args__ = (
        sa.UniqueConstraint(
            "tenant", "channel", "address_index", "category", name="uq_suppression_address"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    channel: str = Field(max_length=16)
    address: str = _sealed("suppression.address")
    address_index: str = _index()
    category: str = Field(max_length=40)
    created_at: datetime = _ts(default_now=True)


class VerificationCode(SQLModel, table=True):
    """A one-time code mailed to prove an identity: stored hashed, short-lived, rate-limited."""

    __tablename__ = "verification_code"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    email: str = _sealed("verification_code.email")
    code_hash: str = Field(max_length=128)
    created_at: datetime = _ts(default_now=True)
    expires_at: datetime = _ts()
    last_sent_at: datetime = _ts(default_now=True)
    attempts: int = 0
    locked_until: datetime | None = _ts(nullable=True)
    verified_at: datetime | None = _ts(nullable=True)


class AdminUser(SQLModel, table=True):
    """Someone who signs in to the admin pages."""

    __tablename__ = "admin_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    password_hash: str = Field(max_length=200)
    role: str = Field(default="viewer", max_length=16)  # admin | viewer
    disabled: bool = False
    created_at: datetime = _ts(default_now=True)
    last_login_at: datetime | None = _ts(nullable=True)


class ApiToken(SQLModel, table=True):
    """A bearer token for the JSON API, kept only as its hash."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    token_hash: str = Field(max_length=128, unique=True)
    created_at: datetime = _ts(default_now=True)
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


class TicketClock(SQLModel, table=True):
    """When the clock should look at a ticket again; `next_at` NULL: (re)plan it at the next
    pass. A row of its own, not a ticket column: on PostgreSQL, changing an indexed column of
    `ticket` writes to all of its indexes (migration 0015). Open tickets only: triggers give a
    ticket its row while it is open, set `next_at` back to NULL when its status or deadline
    changes, and take the row away when it closes (migration 0016)."""

    __tablename__ = "ticket_clock"
    __table_args__ = (sa.Index("ix_ticket_clock_next", "next_at"),)

    ticket_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("ticket.id", ondelete="CASCADE"), primary_key=True
        )
    )
    next_at: datetime | None = _ts(nullable=True)


class ClockPolicy(SQLModel, table=True):
    """The reminder policy a tenant's open tickets were last planned under, as a fingerprint.

    A planned next look (`TicketClock`) is only right for the policy it was planned with: a process
    that loads a tenant whose fingerprint differs re-plans that tenant's open tickets
    (`storage.reminders.adopt_policy`).
    """

    __tablename__ = "clock_policy"

    tenant: str = Field(primary_key=True, max_length=64)
    fingerprint: str = Field(max_length=64)
    changed_at: datetime = _ts(default_now=True)


class ReminderSent(SQLModel, table=True):
    """A reminder, escalation, nudge or expiry the clock acted on: the row is the claim.

    The unique key names one reminder of one deadline (`anchor_at` is the deadline, or the
    moment a ticket began waiting for the customer): inserting it succeeds for exactly one
    process, and only that process queues the message, in the same transaction.
    """

    __tablename__ = "reminder_sent"
    __table_args__ = (sa.UniqueConstraint("ticket_id", "kind", "anchor_at", "slot"),)

    id: int | None = Field(default=None, primary_key=True)
    # the ticket's id, without a foreign key: checking one locked (and wrote) each claimed
    # ticket's row, most of a catch-up's cost (migration 0017); deleting a ticket deletes
    # its claims (`bot.retention.delete_ticket`)
    ticket_id: int
    kind: str = Field(max_length=24)  # before | overdue | verify_nudge | requester_nudge | expire
    anchor_at: datetime = _ts()
    slot: str = Field(default="", max_length=40)  # "3 business days", occurrence "2", or ""
    due_at: datetime = _ts()
    sent_at: datetime = _ts(default_now=True)
    late: bool = False


@sa.event.listens_for(ContactIdentity, "before_insert")
@sa.event.listens_for(ContactIdentity, "before_update")
def _index_identity(_mapper: Any, _connection: Any, target: ContactIdentity) -> None:
    """Keep the blind index in step with the value it stands for."""
    target.value_index = blind_index(target.value)


@sa.event.listens_for(Conversation, "before_insert")
@sa.event.listens_for(Conversation, "before_update")
@sa.event.listens_for(ConsentRecord, "before_insert")
@sa.event.listens_for(ConsentRecord, "before_update")
@sa.event.listens_for(Suppression, "before_insert")
@sa.event.listens_for(Suppression, "before_update")
def _index_address(_mapper: Any, _connection: Any, target: Any) -> None:
    """Keep a routing address's blind index in step with it (Core inserts set it themselves)."""
    target.address_index = blind_index(target.address)


@sa.event.listens_for(OutboundMessage, "before_insert")
@sa.event.listens_for(OutboundMessage, "before_update")
def _index_recipient(_mapper: Any, _connection: Any, target: OutboundMessage) -> None:
    target.recipient_index = blind_index(target.recipient)
