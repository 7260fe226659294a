"""Tamper-evident ticket history: each ticket's events form a hash chain.

An event's hash covers the previous event's hash, its own ticket, time, actor and kind,
and a digest of its data. The ticket keeps the hash of its newest event (`history_head`),
so a changed event, a removed event (anywhere, the newest included) and an event moved to
another ticket all break the chain; `rightsdesk verify-history` walks it.

Retention redacts an event's data by replacing it with `{"_redacted": <digest>}`: the chain
still verifies, and the redaction itself is a new event. SHA-256 without a key: it shows
an edit made without rewriting the rest of the chain; someone who can rewrite every later
hash and the ticket's head in the database is out of its reach (SECURITY.md, "a stolen or
altered database").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Ticket, TicketEvent

REDACTED = "_redacted"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def data_digest(data: dict[str, Any]) -> str:
    """The digest that stands for an event's data, also once the data is redacted."""
    kept = data.get(REDACTED)
    if isinstance(kept, str) and len(data) == 1:
        return kept
    return hashlib.sha256(_canonical(data)).hexdigest()


def event_hash(
    prev: str | None, *, ticket_id: int, at: datetime, actor: str, kind: str, data: dict[str, Any]
) -> str:
    header = {
        "prev": prev or "",
        "ticket": ticket_id,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "kind": kind,
        "data": data_digest(data),
    }
    return hashlib.sha256(_canonical(header)).hexdigest()


def redacted(data: dict[str, Any]) -> dict[str, Any]:
    """What an event's data becomes when retention removes it: only its digest remains."""
    return {REDACTED: data_digest(data)}


async def chain(session: AsyncSession, ticket: Ticket, event: TicketEvent) -> None:
    """Link a new event to its ticket's chain; the ticket row is locked while doing so."""
    assert ticket.id is not None
    table = Ticket.__table__  # type: ignore[attr-defined]
    head_query = sa.select(table.c.history_head).where(table.c.id == ticket.id)
    if session.get_bind().dialect.name == "postgresql":
        head_query = head_query.with_for_update()
    prev = (await session.exec(head_query)).scalar_one_or_none()  # type: ignore[call-overload]
    event.prev_hash = prev
    event.hash = event_hash(
        prev,
        ticket_id=ticket.id,
        at=event.at,
        actor=event.actor,
        kind=event.kind,
        data=event.data,
    )
    await session.exec(
        sa.update(table).where(table.c.id == ticket.id).values(history_head=event.hash)
    )
    # Keep the caller's object in step without making it dirty (no second UPDATE).
    sa.orm.attributes.set_committed_value(ticket, "history_head", event.hash)


@dataclass(frozen=True, slots=True)
class Finding:
    ref: str
    event_id: int | None
    problem: str

    def __str__(self) -> str:
        where = f"event {self.event_id}" if self.event_id is not None else "history"
        return f"{self.ref}: {where}: {self.problem}"


async def _tickets(session: AsyncSession, tenant: str | None) -> AsyncIterator[Ticket]:
    last = 0
    while True:
        query = select(Ticket).where(col(Ticket.id) > last).order_by(col(Ticket.id)).limit(500)
        if tenant is not None:
            query = query.where(Ticket.tenant == tenant)
        batch = list(await session.exec(query))
        if not batch:
            return
        for ticket in batch:
            yield ticket
        last = batch[-1].id or last


def check_chain(ticket: Ticket, events: list[TicketEvent]) -> list[Finding]:
    """What is wrong with one ticket's chain (events in id order); empty when intact."""
    assert ticket.id is not None
    found: list[Finding] = []
    running: str | None = None
    for event in events:
        if event.hash is None:
            found.append(Finding(ticket.ref, event.id, "has no hash (written outside the chain)"))
            continue
        if event.prev_hash != running:
            found.append(Finding(ticket.ref, event.id, "an event before it was removed"))
        expected = event_hash(
            event.prev_hash,
            ticket_id=ticket.id,
            at=event.at,
            actor=event.actor,
            kind=event.kind,
            data=event.data,
        )
        if expected != event.hash:
            found.append(Finding(ticket.ref, event.id, "was changed after it was written"))
        running = event.hash
    if running != ticket.history_head:
        found.append(Finding(ticket.ref, None, "its newest event was removed or replaced"))
    return found


async def verify(session: AsyncSession, *, tenant: str | None = None) -> tuple[int, list[Finding]]:
    """Walk every ticket's chain; returns how many tickets were checked and what is wrong."""
    checked = 0
    found: list[Finding] = []
    async for ticket in _tickets(session, tenant):
        events = list(
            await session.exec(
                select(TicketEvent)
                .where(TicketEvent.ticket_id == ticket.id)
                .order_by(col(TicketEvent.id))
            )
        )
        found.extend(check_chain(ticket, events))
        checked += 1
    return checked, found
