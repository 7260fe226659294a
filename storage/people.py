"""Requesters, their contact identities, conversations, and the consent ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.crypto import blind_index
from storage.enums import CLOSED_STATUSES
from storage.models import (
    ConsentRecord,
    ContactIdentity,
    Conversation,
    Requester,
    Suppression,
    Ticket,
)


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def conversation_for_update(
    session: AsyncSession, *, channel: str, address: str, tenant: str, now: datetime
) -> Conversation:
    """The conversation row, created on first contact and locked for this transaction.

    Two workers can never advance one customer's dialogue at the same time: the second
    waits on the row lock (PostgreSQL) or the write lock (SQLite).
    """
    table = Conversation.__table__  # type: ignore[attr-defined]
    index = blind_index(address)
    await session.exec(
        _insert(session)(table)
        .values(
            channel=channel,
            address=address,
            address_index=index,
            tenant=tenant,
            step="start",
            state={},
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["channel", "address_index", "tenant"])
    )
    result = await session.exec(
        select(Conversation)
        .where(
            Conversation.channel == channel,
            Conversation.address_index == index,
            Conversation.tenant == tenant,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.one()


async def find_requester(
    session: AsyncSession, *, tenant: str, kind: str, value: str
) -> Requester | None:
    """The requester holding this identity at this tenant, if any."""
    found = await session.exec(
        select(Requester)
        .join(ContactIdentity, col(ContactIdentity.requester_id) == col(Requester.id))
        .where(
            ContactIdentity.tenant == tenant,
            ContactIdentity.kind == kind,
            ContactIdentity.value_index == blind_index(value),
        )
    )
    return found.first()


async def requester_for(
    session: AsyncSession,
    *,
    tenant: str,
    kind: str,
    value: str,
    now: datetime,
    display_name: str | None = None,
    language: str | None = None,
) -> Requester:
    """The requester known by this identity at this tenant, created on first use."""
    requester = await find_requester(session, tenant=tenant, kind=kind, value=value)
    if requester is not None:
        return requester
    requester = Requester(
        tenant=tenant, display_name=display_name, language=language, created_at=now
    )
    session.add(requester)
    await session.flush()
    assert requester.id is not None
    session.add(
        ContactIdentity(
            requester_id=requester.id, tenant=tenant, kind=kind, value=value, created_at=now
        )
    )
    await session.flush()
    return requester


async def prove_identity(
    session: AsyncSession,
    *,
    requester_id: int,
    tenant: str,
    kind: str,
    value: str,
    now: datetime,
) -> None:
    """Record that the requester proved `value` (an email by code, a WhatsApp number by
    writing from it); an identity held by someone else stays theirs and is not moved."""
    found = await session.exec(
        select(ContactIdentity).where(
            ContactIdentity.tenant == tenant,
            ContactIdentity.kind == kind,
            ContactIdentity.value_index == blind_index(value),
        )
    )
    identity = found.first()
    if identity is None:
        session.add(
            ContactIdentity(
                requester_id=requester_id,
                tenant=tenant,
                kind=kind,
                value=value,
                verified_at=now,
                created_at=now,
            )
        )
    elif identity.requester_id == requester_id and identity.verified_at is None:
        identity.verified_at = now
        session.add(identity)
    await session.flush()


async def tickets_of(session: AsyncSession, *, requester_id: int, tenant: str) -> list[Ticket]:
    """The requester's tickets at this tenant, open ones first, newest first."""
    result = await session.exec(
        select(Ticket)
        .where(Ticket.requester_id == requester_id, Ticket.tenant == tenant)
        .order_by(col(Ticket.status).in_(list(CLOSED_STATUSES)), col(Ticket.id).desc())
        .limit(20)
    )
    return list(result)


async def record_consent(
    session: AsyncSession,
    *,
    tenant: str,
    requester_id: int | None,
    channel: str,
    address: str,
    category: str,
    granted: bool,
    words: str,
    ticket_id: int | None,
    now: datetime,
    identity: str | None = None,
) -> None:
    """Write the ledger line and bring the suppression list in line with it.

    `identity` is the email or phone a cookie choice applies to on the business's website:
    kept sealed in the ledger line; the suppression list stays keyed by the chat address.
    """
    session.add(
        ConsentRecord(
            tenant=tenant,
            requester_id=requester_id,
            channel=channel,
            address=address,
            category=category,
            identity=identity,
            granted=granted,
            words=words[:200],
            ticket_id=ticket_id,
            at=now,
        )
    )
    table = Suppression.__table__  # type: ignore[attr-defined]
    if granted:
        await session.exec(
            sa.delete(table).where(
                table.c.tenant == tenant,
                table.c.channel == channel,
                table.c.address_index == blind_index(address),
                table.c.category == category,
            )
        )
    else:
        await session.exec(
            _insert(session)(table)
            .values(
                tenant=tenant,
                channel=channel,
                address=address,
                address_index=blind_index(address),
                category=category,
                created_at=now,
            )
            .on_conflict_do_nothing(
                index_elements=["tenant", "channel", "address_index", "category"]
            )
        )
    await session.flush()


async def is_suppressed(
    session: AsyncSession, *, tenant: str, channel: str, address: str, category: str
) -> bool:
    result = await session.exec(
        select(Suppression.id).where(
            Suppression.tenant == tenant,
            Suppression.channel == channel,
            Suppression.address_index == blind_index(address),
            Suppression.category == category,
        )
    )
    return result.first() is not None


async def attach_identity(
    session: AsyncSession,
    *,
    requester_id: int,
    tenant: str,
    kind: str,
    value: str,
    now: datetime,
) -> None:
    """Give the requester this identity unless someone at the tenant already has it."""
    found = await session.exec(
        select(ContactIdentity.id).where(
            ContactIdentity.tenant == tenant,
            ContactIdentity.kind == kind,
            ContactIdentity.value_index == blind_index(value),
        )
    )
    if found.first() is None:
        session.add(
            ContactIdentity(
                requester_id=requester_id, tenant=tenant, kind=kind, value=value, created_at=now
            )
        )
        await session.flush()
