"""Tickets: per-tenant sequential references and the append-only event history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import history
from storage.enums import TicketStatus
from storage.models import Ticket, TicketCounter, TicketEvent

REF_DIGITS = 5  # OD-2026-00042; more digits once a tenant passes 99,999 in a year


def format_ref(prefix: str, year: int, seq: int) -> str:
    return f"{prefix}-{year}-{seq:0{REF_DIGITS}d}"


async def next_seq(session: AsyncSession, *, tenant: str, year: int) -> int:
    """The next number of `tenant`'s `year`, allocated inside the caller's transaction.

    The counter row is created on first use and then incremented with UPDATE … RETURNING,
    which takes its row lock: concurrent filings queue on it and never share a number.
    """
    table = TicketCounter.__table__  # type: ignore[attr-defined]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    await session.exec(
        insert(table)
        .values(tenant=tenant, year=year, last=0)
        .on_conflict_do_nothing(index_elements=["tenant", "year"])
    )
    result = await session.exec(
        sa.update(table)
        .where(table.c.tenant == tenant, table.c.year == year)
        .values(last=table.c.last + 1)
        .returning(table.c.last)
    )
    return int(result.scalar_one())


async def create_ticket(
    session: AsyncSession,
    *,
    tenant: str,
    ref_prefix: str,
    kind: str,
    channel: str,
    received_at: datetime,
    status: TicketStatus = TicketStatus.OPEN,
    language: str = "en",
    requester_id: int | None = None,
    details: str | None = None,
    due_at: datetime | None = None,
    clock_started_at: datetime | None = None,
    actor: str = "customer",
) -> Ticket:
    """File a ticket with the next reference of its tenant and year, and its first event."""
    year = received_at.year
    seq = await next_seq(session, tenant=tenant, year=year)
    ticket = Ticket(
        tenant=tenant,
        ref=format_ref(ref_prefix, year, seq),
        year=year,
        seq=seq,
        kind=kind,
        status=status,
        channel=channel,
        language=language,
        requester_id=requester_id,
        details=details,
        received_at=received_at,
        due_at=due_at,
        clock_started_at=clock_started_at,
        created_at=received_at,
        updated_at=received_at,
    )
    session.add(ticket)
    await session.flush()
    await add_event(
        session,
        ticket,
        actor=actor,
        kind="created",
        at=received_at,
        data={"status": str(status), "type": kind, "channel": channel},
    )
    return ticket


async def add_event(
    session: AsyncSession,
    ticket: Ticket,
    *,
    actor: str,
    kind: str,
    at: datetime,
    data: dict[str, Any] | None = None,
) -> TicketEvent:
    """Append one line to the ticket's history, chained to the one before it."""
    assert ticket.id is not None
    event = TicketEvent(ticket_id=ticket.id, actor=actor, kind=kind, at=at, data=data or {})
    await history.chain(session, ticket, event)
    session.add(event)
    await session.flush()
    return event


async def by_ref(session: AsyncSession, ref: str) -> Ticket | None:
    result = await session.exec(select(Ticket).where(Ticket.ref == ref))
    return result.first()


async def events_of(session: AsyncSession, ticket_id: int) -> list[TicketEvent]:
    result = await session.exec(
        select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(col(TicketEvent.id))
    )
    return list(result)
