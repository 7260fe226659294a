"""Retention: what a tenant's `[retention]` says to forget, forgotten on schedule.

- `closed_ticket_personal_data`: that long after a ticket closes, its personal data goes —
  the details, the conversation in its history (each event's data replaced by its digest,
  so the tamper-evident chain still verifies), verification codes, delivered files and
  their links, the texts of the messages sent about it, and the requester's contacts once
  none of their tickets still needs them. What stays is the evidence record: reference,
  type, channel, dates, outcome, and the reasons given for a rejection or an extension
  (CCPA regs §7101(a) asks for the request, its date, the response and "the basis for the
  denial"). An event `personal_data_removed` records the purge in the history.
- `evidence_record`: that long after a ticket closes, the ticket and everything attached
  to it is deleted.
- Unset: nothing is purged automatically for that tenant (the tenant file says why).

Whatever the tenant, conversations idle for `ABANDONED_AFTER` are cleared (what someone
half-typed to the bot and never finished), and stored webhook bodies and sent message texts
are emptied after `MESSAGES_KEPT` (they exist to process and deliver, and to stop
duplicates, which needs days, not months). Opt-outs (suppressions) and the consent ledger
are never purged: forgetting an opt-out would contact the person again.

`rightsdesk purge --dry-run` prints what would go; the clock runs `purge` every hour.
Several processes may run it at once: each ticket is taken under a row lock (PostgreSQL:
`FOR UPDATE SKIP LOCKED`) and re-checked, so nothing is purged twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import Duration, add_duration
from bot.reminders import tenant_calendar
from bot.tenants import Tenant, Tenants
from storage import history, tickets
from storage.db import SessionFactory, transaction
from storage.enums import CLOSED_STATUSES, OutboxStatus
from storage.models import (
    ContactIdentity,
    Conversation,
    InboundMessage,
    OutboundMessage,
    ReminderSent,
    Requester,
    Ticket,
    TicketEvent,
    VerificationCode,
)

log = logging.getLogger(__name__)

ABANDONED_AFTER = timedelta(days=30)
MESSAGES_KEPT = timedelta(days=30)
MARK = "personal_data_removed"
KEEP_DATA_OF = frozenset({"rejected", "extended"})  # the reasons are the evidence
BATCH = 200


@dataclass
class Report:
    """What a purge did, or with `dry_run` would do."""

    dry_run: bool
    redacted: dict[str, list[str]] = field(default_factory=dict)  # tenant -> refs
    deleted: dict[str, list[str]] = field(default_factory=dict)
    conversations: int = 0
    inbound: int = 0
    outbound: int = 0

    def lines(self) -> list[str]:
        verb = "would" if self.dry_run else "did"
        out = []
        for slug in sorted(set(self.redacted) | set(self.deleted)):
            redacted, deleted = self.redacted.get(slug, []), self.deleted.get(slug, [])
            out.append(
                f"{slug}: {len(redacted)} closed tickets {verb} lose their personal data"
                f"{' (' + ', '.join(redacted[:20]) + ')' if redacted else ''}; "
                f"{len(deleted)} {verb} be deleted"
                f"{' (' + ', '.join(deleted[:20]) + ')' if deleted else ''}"
            )
        out.append(
            f"all tenants: {self.conversations} idle conversations, {self.inbound} stored "
            f"webhooks and {self.outbound} sent message texts {verb} be cleared"
        )
        return out


def _due(closed_at: datetime, after: Duration, tenant: Tenant, now: datetime) -> bool:
    return add_duration(closed_at, after, tenant_calendar(tenant)) <= now


def _closed(tenant: str) -> Any:
    return select(Ticket).where(
        Ticket.tenant == tenant,
        col(Ticket.status).in_([str(s) for s in CLOSED_STATUSES]),
        col(Ticket.closed_at).is_not(None),
    )


def _not_redacted() -> Any:
    marked = select(TicketEvent.id).where(
        TicketEvent.ticket_id == Ticket.id, TicketEvent.kind == MARK
    )
    return ~sa.exists(marked)


async def _candidates(
    session: AsyncSession, query: Any, after: Duration, tenant: Tenant, now: datetime
) -> list[Ticket]:
    """Closed tickets, oldest closing first, whose period has run out (stops at the first
    that has not: the period's end only moves later with a later close)."""
    found: list[Ticket] = []
    last: tuple[datetime, int] | None = None
    while True:
        page = query.order_by(col(Ticket.closed_at), col(Ticket.id)).limit(BATCH)
        if last is not None:
            page = page.where(sa.tuple_(Ticket.closed_at, Ticket.id) > sa.tuple_(*last))
        batch = list(await session.exec(page))
        for ticket in batch:
            assert ticket.closed_at is not None and ticket.id is not None
            if not _due(ticket.closed_at, after, tenant, now):
                return found
            found.append(ticket)
        if len(batch) < BATCH:
            return found
        last = (batch[-1].closed_at, batch[-1].id)


async def _lock(session: AsyncSession, ticket_id: int) -> Ticket | None:
    query = select(Ticket).where(Ticket.id == ticket_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return (await session.exec(query)).first()


# --- deleting a ticket and all that hangs off it ---------------------------------------


def _referencing(table: sa.Table) -> Iterable[tuple[sa.Table, sa.Column[Any], sa.Column[Any]]]:
    """(child table, its column, the column of `table` it refers to) for every foreign key."""
    for other in SQLModel.metadata.sorted_tables:
        for fk in other.foreign_keys:
            if fk.column.table is table and fk.parent.table is other:
                yield other, fk.parent, fk.column


async def _delete_where(session: AsyncSession, table: sa.Table, where: Any) -> None:
    """Delete rows of `table` matching `where`, first what refers to them: nullable
    references are cleared, the others deleted in turn (whatever tables exist then)."""
    for child, column, target in _referencing(table):
        keys = sa.select(target).where(where)
        if column.nullable:
            await session.exec(sa.update(child).where(column.in_(keys)).values({column.name: None}))
        else:
            await _delete_where(session, child, column.in_(keys))
    await session.exec(sa.delete(table).where(where))


async def delete_ticket(session: AsyncSession, ticket: Ticket) -> None:
    table = Ticket.__table__  # type: ignore[attr-defined]
    requester = ticket.requester_id
    # the clock's claims name the ticket without a foreign key (migration 0017)
    await session.exec(sa.delete(ReminderSent).where(col(ReminderSent.ticket_id) == ticket.id))
    await _delete_where(session, table, table.c.id == ticket.id)
    if requester is not None:
        await _forget_requester(session, requester)


# --- removing personal data from a closed ticket ---------------------------------------


async def _forget_requester(session: AsyncSession, requester_id: int) -> None:
    """A requester's contacts go once no ticket of theirs still keeps personal data.

    Someone from the business's own customer list (`customer_ref`) is the business's
    record, not the request's, and stays.
    """
    requester = await session.get(Requester, requester_id)
    if requester is None or requester.customer_ref is not None:
        return
    still = select(Ticket.id).where(Ticket.requester_id == requester_id, _not_redacted())
    if (await session.exec(still)).first() is not None:
        return
    await session.exec(
        sa.delete(ContactIdentity).where(col(ContactIdentity.requester_id) == requester_id)
    )
    requester.display_name = None
    session.add(requester)


async def redact_ticket(
    session: AsyncSession, ticket: Ticket, *, rule: str, after: Duration, now: datetime
) -> None:
    assert ticket.id is not None
    ticket.details = None
    ticket.updated_at = now
    session.add(ticket)
    for event in await tickets.events_of(session, ticket.id):
        if event.kind in KEEP_DATA_OF or not event.data or history.REDACTED in event.data:
            continue
        event.data = history.redacted(event.data)
        session.add(event)
    await session.exec(
        sa.delete(VerificationCode).where(col(VerificationCode.ticket_id) == ticket.id)
    )
    outbound = OutboundMessage.__table__  # type: ignore[attr-defined]
    await session.exec(
        sa.update(outbound)
        .where(outbound.c.ticket_id == ticket.id, outbound.c.status != OutboxStatus.PENDING)
        .values(payload={})
    )
    for table in _file_tables():
        await _delete_where(session, table, table.c.ticket_id == ticket.id)
    await session.flush()
    await tickets.add_event(
        session, ticket, actor="system", kind=MARK, at=now, data={"rule": rule, "after": str(after)}
    )
    if ticket.requester_id is not None:
        await _forget_requester(session, ticket.requester_id)


def _file_tables() -> list[sa.Table]:
    """Files delivered for a ticket (the staff desk's), whichever are defined."""
    tables = SQLModel.metadata.tables
    return [tables[name] for name in ("desk_file",) if name in tables]


# --- the pass ----------------------------------------------------------------------------


async def _tenant_pass(
    sessions: SessionFactory, tenant: Tenant, now: datetime, report: Report
) -> None:
    rules = tenant.retention
    if rules.evidence_record is not None:
        async with sessions() as session:
            due = await _candidates(
                session, _closed(tenant.slug), rules.evidence_record, tenant, now
            )
        for found in due:
            assert found.id is not None
            if report.dry_run:
                report.deleted.setdefault(tenant.slug, []).append(found.ref)
                continue
            async with transaction(sessions) as session:
                ticket = await _lock(session, found.id)
                if ticket is None:
                    continue
                await delete_ticket(session, ticket)
            report.deleted.setdefault(tenant.slug, []).append(found.ref)
            log.info("ticket %s deleted: evidence period over", found.ref)
    if rules.closed_ticket_personal_data is not None:
        after = rules.closed_ticket_personal_data
        async with sessions() as session:
            due = await _candidates(
                session, _closed(tenant.slug).where(_not_redacted()), after, tenant, now
            )
        gone = set(report.deleted.get(tenant.slug, []))
        for found in due:
            assert found.id is not None
            if found.ref in gone:
                continue
            if report.dry_run:
                report.redacted.setdefault(tenant.slug, []).append(found.ref)
                continue
            async with transaction(sessions) as session:
                ticket = await _lock(session, found.id)
                marked = select(TicketEvent.id).where(
                    TicketEvent.ticket_id == found.id, TicketEvent.kind == MARK
                )
                if ticket is None or (await session.exec(marked)).first() is not None:
                    continue
                await redact_ticket(
                    session, ticket, rule="closed_ticket_personal_data", after=after, now=now
                )
            report.redacted.setdefault(tenant.slug, []).append(found.ref)
            log.info("ticket %s: personal data removed", found.ref)


async def _housekeeping(sessions: SessionFactory, now: datetime, report: Report) -> None:
    idle = col(Conversation.updated_at) < now - ABANDONED_AFTER
    old_in = col(InboundMessage.processed_at) < now - MESSAGES_KEPT
    outbound = OutboundMessage.__table__  # type: ignore[attr-defined]
    old_out = sa.and_(
        outbound.c.status != OutboxStatus.PENDING,
        outbound.c.status != OutboxStatus.SENDING,
        outbound.c.created_at < now - MESSAGES_KEPT,
        sa.cast(outbound.c.payload, sa.Text) != "{}",
    )
    async with transaction(sessions) as session:
        count = sa.func.count()
        report.conversations = (
            await session.exec(select(count).select_from(Conversation).where(idle))
        ).one()
        report.inbound = (
            await session.exec(select(count).select_from(InboundMessage).where(old_in))
        ).one()
        report.outbound = (
            await session.exec(select(count).select_from(outbound).where(old_out))
        ).one()
        if report.dry_run:
            return
        await session.exec(sa.delete(Conversation).where(idle))
        await session.exec(sa.delete(InboundMessage).where(old_in))
        await session.exec(sa.update(outbound).where(old_out).values(payload={}))


async def purge(
    sessions: SessionFactory, tenants: Tenants, *, now: datetime, dry_run: bool = False
) -> Report:
    """One retention pass over every tenant, then the housekeeping."""
    report = Report(dry_run=dry_run)
    for tenant in tenants:
        await _tenant_pass(sessions, tenant, now, report)
    await _housekeeping(sessions, now, report)
    return report
