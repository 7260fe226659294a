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
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

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


@dataclass(frozen=True, slots=True)
class Summary:
    """What the clock reads from a history, kept on the ticket row by every new event.

    An event whose data has a `status` records entering that status at its `at` (the
    `created` event does); one whose data has `due_at` set a new deadline. `status` None:
    not known, the ticket's history began before these were kept (migration 0014).
    """

    status: str | None = None  # the status the history last recorded
    status_at: datetime | None = None  # when the run of that status began
    due_set_at: datetime | None = None  # the latest event that set a deadline

    def then(self, at: datetime, data: dict[str, Any], *, first: bool) -> Summary:
        """The summary once an event at `at` with `data` is added (`first`: the history's
        first event); not known stays not known."""
        if self.status is None and not first:
            return self
        status, status_at, due_set_at = self.status, self.status_at, self.due_set_at
        new = data.get("status")
        if isinstance(new, str) and new != status:
            status, status_at = new, at
        if "due_at" in data and (due_set_at is None or at > due_set_at):
            due_set_at = at
        return Summary(status, status_at, due_set_at)

    @classmethod
    def kept_on(cls, ticket: Ticket) -> Summary:
        """The summary the ticket's row holds (`status` None: not known)."""
        return cls(ticket.history_status, ticket.history_status_at, ticket.history_due_set_at)

    def values(self) -> dict[str, Any]:
        """The ticket columns that hold it."""
        return {
            "history_status": self.status,
            "history_status_at": self.status_at,
            "history_due_set_at": self.due_set_at,
        }


class Line(Protocol):
    """An event as far as its summary reads it (`TicketEvent`, `storage.reminders.Step`)."""

    @property
    def at(self) -> datetime: ...

    @property
    def data(self) -> dict[str, Any]: ...


def summarize(events: Iterable[Line]) -> Summary:
    """The summary of a whole history, given oldest event first."""
    summary = Summary()
    for index, event in enumerate(events):
        summary = summary.then(event.at, event.data or {}, first=index == 0)
    return summary


async def chain(session: AsyncSession, ticket: Ticket, event: TicketEvent) -> None:
    """Link a new event to its ticket's chain and fold it into the ticket's `Summary`; the
    ticket row is locked while doing so."""
    assert ticket.id is not None
    table = Ticket.__table__  # type: ignore[attr-defined]
    head_query = sa.select(
        table.c.history_head,
        table.c.history_status,
        table.c.history_status_at,
        table.c.history_due_set_at,
    ).where(table.c.id == ticket.id)
    if session.get_bind().dialect.name == "postgresql":
        head_query = head_query.with_for_update()
    row = (await session.exec(head_query)).one_or_none()  # type: ignore[call-overload]
    prev, *known = row if row is not None else (None, None, None, None)
    summary = Summary(*known).then(event.at, event.data, first=prev is None)
    event.prev_hash = prev
    event.hash = event_hash(
        prev,
        ticket_id=ticket.id,
        at=event.at,
        actor=event.actor,
        kind=event.kind,
        data=event.data,
    )
    values = {"history_head": event.hash, **summary.values()}
    await session.exec(sa.update(table).where(table.c.id == ticket.id).values(**values))
    # Keep the caller's object in step without making it dirty (no second UPDATE).
    for name, value in values.items():
        sa.orm.attributes.set_committed_value(ticket, name, value)


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
    kept = Summary.kept_on(ticket)
    redacted_any = any(REDACTED in event.data for event in events)  # its facts are gone
    if kept.status is not None and not redacted_any and kept != summarize(events):
        found.append(Finding(ticket.ref, None, "the summary on its row differs from its events"))
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
