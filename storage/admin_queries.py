"""The admin pages' and the API's queries: the ticket list with keyset paging, counts,
exports, yearly metrics, chart series, the audit trail, sign-in sessions and throttling,
sandbox transcripts and the webhook relay's reading of the event log.

Lists are sorted by deadline, then id, tickets without a deadline (waiting for their clock
to start) last. A page ends with a cursor `(due_at, id)` of its last row; the next page is
the rows after it in that order, a range scan of `ix_admin_ticket_due` (or of its partial
twin over active tickets, or of `ix_ticket_status_due` / `ix_admin_ticket_active_tenant_due`
when filtered), so page 10,000 costs what page 1 does.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.admin_models import (
    AdminAudit,
    AdminSession,
    LoginAttempt,
    SandboxChat,
    TicketStatusCount,
    WebhookRelay,
)
from storage.crypto import blind_indexes
from storage.enums import CLOSED_STATUSES, TicketStatus
from storage.models import (
    AdminUser,
    ApiToken,
    ContactIdentity,
    Conversation,
    InboundMessage,
    OutboundMessage,
    Requester,
    Suppression,
    Ticket,
    TicketEvent,
)
from storage.types import UTCDateTime

_T = Ticket.__table__  # type: ignore[attr-defined]
_E = TicketEvent.__table__  # type: ignore[attr-defined]
_O = OutboundMessage.__table__  # type: ignore[attr-defined]

ACTIVE_STATUSES = (
    TicketStatus.AWAITING_VERIFICATION,
    TicketStatus.OPEN,
    TicketStatus.IN_PROGRESS,
    TicketStatus.AWAITING_REQUESTER,
)
# Literal text, so the planners can match the partial indexes of migration 0004 (a bound
# parameter list would hide the values from PostgreSQL's generic plans).
ACTIVE_SQL = sa.text(
    "ticket.status IN ('awaiting_verification', 'open', 'in_progress', 'awaiting_requester')"
)
CLOSED_SQL = sa.text(
    "ticket.status NOT IN ('awaiting_verification', 'open', 'in_progress', 'awaiting_requester')"
)


# --- the ticket list ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TicketFilter:
    """What the list shows; every field narrows it (None: no condition)."""

    tenant: str | None = None
    status: str | None = None  # a TicketStatus value
    active: bool | None = None  # True: open statuses only; False: closed only
    kind: str | None = None
    channel: str | None = None
    assignee: int | None = None
    unassigned: bool = False
    overdue: bool = False
    due_within: timedelta | None = None
    ref: str | None = None
    contact_values: tuple[str, ...] | None = None  # requesters known by any of these

    def without_status(self) -> TicketFilter:
        return replace(self, status=None, active=None)


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last row of a page, in list order: (deadline or None, id)."""

    due_at: datetime | None
    id: int


def _conditions(f: TicketFilter, now: datetime) -> list[Any]:
    where: list[Any] = []
    if f.tenant is not None:
        where.append(_T.c.tenant == f.tenant)
    if f.status is not None:
        where.append(_T.c.status == f.status)
    if f.active is True or f.overdue or f.due_within is not None:
        where.append(ACTIVE_SQL)
    elif f.active is False:
        where.append(CLOSED_SQL)
    if f.kind is not None:
        where.append(_T.c.kind == f.kind)
    if f.channel is not None:
        where.append(_T.c.channel == f.channel)
    if f.assignee is not None:
        where.append(_T.c.assignee_user_id == f.assignee)
    elif f.unassigned:
        where.append(_T.c.assignee_user_id.is_(None))
    if f.overdue:
        where.append(_T.c.due_at < now)
    if f.due_within is not None:
        where.append(_T.c.due_at >= now)
        where.append(_T.c.due_at <= now + f.due_within)
    if f.ref is not None:
        where.append(_T.c.ref == f.ref)
    if f.contact_values is not None:
        known = sa.select(ContactIdentity.requester_id).where(  # type: ignore[call-overload]
            col(ContactIdentity.value_index).in_(blind_indexes(f.contact_values))
        )
        where.append(_T.c.requester_id.in_(known))
    return where


def _needs_deadline(f: TicketFilter) -> bool:
    return f.overdue or f.due_within is not None


def _utc(value: datetime) -> Any:
    return sa.literal(value, UTCDateTime())


def dated_page(f: TicketFilter, *, now: datetime, limit: int, after: Cursor | None) -> Any:
    """The query of a page's rows that have a deadline, after `after` in list order."""
    where = [*_conditions(f, now), _T.c.due_at.is_not(None)]
    if after is not None and after.due_at is not None:
        where.append(
            sa.tuple_(_T.c.due_at, _T.c.id) > sa.tuple_(_utc(after.due_at), sa.literal(after.id))
        )
    return select(Ticket).where(*where).order_by(_T.c.due_at, _T.c.id).limit(limit)


def undated_page(f: TicketFilter, *, now: datetime, limit: int, after: Cursor | None) -> Any:
    """The query of a page's rows without a deadline yet (they come last, by id)."""
    where = [*_conditions(f, now), _T.c.due_at.is_(None)]
    if after is not None and after.due_at is None:
        where.append(_T.c.id > after.id)
    return select(Ticket).where(*where).order_by(_T.c.id).limit(limit)


async def page_tickets(
    session: AsyncSession,
    f: TicketFilter,
    *,
    now: datetime,
    limit: int,
    after: Cursor | None = None,
) -> tuple[list[Ticket], Cursor | None]:
    """One page of the list in deadline order, and the cursor of the next page (or None)."""
    rows: list[Ticket] = []
    if after is None or after.due_at is not None:
        query = dated_page(f, now=now, limit=limit + 1, after=after)
        rows = list(await session.exec(query))
    if len(rows) <= limit and not _needs_deadline(f):
        query = undated_page(f, now=now, limit=limit + 1 - len(rows), after=after)
        rows.extend(await session.exec(query))
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        assert last.id is not None
        return rows, Cursor(last.due_at, last.id)
    return rows, None


async def iter_tickets(
    session: AsyncSession, f: TicketFilter, *, now: datetime, batch: int = 1000
) -> AsyncIterator[list[Ticket]]:
    """Every ticket of the filter in list order, a batch at a time (for exports)."""
    cursor: Cursor | None = None
    while True:
        rows, cursor = await page_tickets(session, f, now=now, limit=batch, after=cursor)
        if rows:
            yield rows
        if cursor is None:
            return


_COUNTS = TicketStatusCount.__table__  # type: ignore[attr-defined]


async def count_by_status(
    session: AsyncSession, f: TicketFilter, *, now: datetime
) -> dict[str, int]:
    """How many tickets of each status match the filter (the status part left out).

    Filtered by business at most, the counts come from `ticket_status_count` (a sum over a
    few rows, whatever the number of tickets); any other filter counts the tickets.
    """
    f = f.without_status()
    if f == TicketFilter(tenant=f.tenant):
        total = sa.func.sum(_COUNTS.c.delta)
        query = sa.select(_COUNTS.c.status, total).group_by(_COUNTS.c.status).having(total != 0)
        if f.tenant is not None:
            query = query.where(_COUNTS.c.tenant == f.tenant)
    else:
        query = (
            sa.select(_T.c.status, sa.func.count())
            .where(*_conditions(f, now))
            .group_by(_T.c.status)
        )
    result = await session.exec(query)  # type: ignore[call-overload]
    return {str(status): int(count) for status, count in result}


# On PostgreSQL the pages of the deltas a fold deletes stay in the table's file (VACUUM
# cannot give them back: the folded rows are written at its end), and every count scans
# them. After a million deltas at once (a bulk import, a retention purge) that is 7,932
# empty pages, 15 ms of each admin page (bench/README.md, session 11). A table grown past
# this is emptied by TRUNCATE instead (a new, empty file).
REWRITE_COUNTS_ABOVE = 1 << 20  # bytes: ≈ 17,000 deltas; a 30 s fold keeps it far smaller


async def compact_counts(
    session: AsyncSession, *, rewrite_above: int = REWRITE_COUNTS_ABOVE
) -> int:
    """Fold `ticket_status_count` into one row per (tenant, status); how many rows went.

    One DELETE … RETURNING takes the rows, so what is summed is exactly what was removed,
    even while other transactions append new deltas (they are neither seen nor deleted).
    """
    if session.get_bind().dialect.name == "postgresql":
        rewritten = await _rewrite_counts(session, rewrite_above)
        if rewritten is not None:
            return rewritten
    deleted = await session.exec(
        sa.delete(_COUNTS).returning(_COUNTS.c.tenant, _COUNTS.c.status, _COUNTS.c.delta)
    )
    totals: dict[tuple[str, str], int] = {}
    rows = 0
    for tenant, status, delta in deleted:
        totals[tenant, status] = totals.get((tenant, status), 0) + int(delta)
        rows += 1
    await _insert_totals(session, totals)
    return rows


async def _rewrite_counts(session: AsyncSession, rewrite_above: int) -> int | None:
    """PostgreSQL, a table grown past `rewrite_above` bytes: its totals written into a new,
    empty file (TRUNCATE); how many rows went. None, and nothing done, when it is smaller
    or its lock is not free at once: NOWAIT, so that writers never queue behind the fold
    (nor deadlock with it); the next fold tries again."""
    connection = await session.connection()
    size = await connection.exec_driver_sql("SELECT pg_relation_size('ticket_status_count')")
    if size.scalar_one() <= rewrite_above:
        return None
    try:
        async with connection.begin_nested():
            await connection.exec_driver_sql(
                "LOCK TABLE ticket_status_count IN ACCESS EXCLUSIVE MODE NOWAIT"
            )
    except sa.exc.DBAPIError:  # lock_not_available: writers are appending deltas
        return None
    total, rows = sa.func.sum(_COUNTS.c.delta), sa.func.count()
    grouped = await session.exec(  # type: ignore[call-overload]
        sa.select(_COUNTS.c.tenant, _COUNTS.c.status, total, rows).group_by(
            _COUNTS.c.tenant, _COUNTS.c.status
        )
    )
    totals: dict[tuple[str, str], int] = {}
    removed = 0
    for tenant, status, delta, count in grouped:
        totals[tenant, status] = int(delta)
        removed += int(count)
    await connection.exec_driver_sql("TRUNCATE ticket_status_count")
    await _insert_totals(session, totals)
    return removed


async def _insert_totals(session: AsyncSession, totals: dict[tuple[str, str], int]) -> None:
    folded = [{"tenant": t, "status": s, "delta": n} for (t, s), n in totals.items() if n]
    if folded:
        await session.exec(sa.insert(_COUNTS), params=folded)


async def ticket_by_ref(session: AsyncSession, ref: str) -> Ticket | None:
    result = await session.exec(select(Ticket).where(Ticket.ref == ref))
    return result.first()


async def events_for(
    session: AsyncSession, ticket_ids: Sequence[int], kinds: Sequence[str]
) -> list[TicketEvent]:
    """Events of these kinds for a batch of tickets, oldest first."""
    if not ticket_ids:
        return []
    result = await session.exec(
        select(TicketEvent)
        .where(
            col(TicketEvent.ticket_id).in_(list(ticket_ids)), col(TicketEvent.kind).in_(list(kinds))
        )
        .order_by(col(TicketEvent.id))
    )
    return list(result)


# --- one ticket ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was said on a ticket's channel between the desk and its requester."""

    inbound: list[InboundMessage]
    outbound: list[OutboundMessage]


async def requester_of(
    session: AsyncSession, ticket: Ticket
) -> tuple[Requester | None, list[ContactIdentity]]:
    if ticket.requester_id is None:
        return None, []
    requester = await session.get(Requester, ticket.requester_id)
    identities = await session.exec(
        select(ContactIdentity)
        .where(ContactIdentity.requester_id == ticket.requester_id)
        .order_by(col(ContactIdentity.id))
    )
    return requester, list(identities)


async def addresses_of(session: AsyncSession, ticket: Ticket) -> list[str]:
    """Where the requester talks to this tenant on the ticket's channel."""
    if ticket.requester_id is None:
        return []
    result = await session.exec(
        select(Conversation.address).where(
            Conversation.requester_id == ticket.requester_id,
            Conversation.channel == ticket.channel,
            Conversation.tenant == ticket.tenant,
        )
    )
    return sorted(set(result))


async def transcript(session: AsyncSession, ticket: Ticket, *, limit: int = 200) -> Transcript:
    """The latest messages both ways with the requester, plus anything queued for the ticket."""
    addresses = await addresses_of(session, ticket)
    inbound: list[InboundMessage] = []
    outbound: list[OutboundMessage] = []
    if addresses:
        query = select(InboundMessage).where(
            InboundMessage.channel == ticket.channel,
            col(InboundMessage.sender_index).in_(blind_indexes(addresses)),
            InboundMessage.kind != "status",
        )
        if ticket.channel == "whatsapp":
            query = query.where(InboundMessage.tenant == ticket.tenant)
        inbound = list(
            await session.exec(query.order_by(col(InboundMessage.id).desc()).limit(limit))
        )
    to_requester = sa.and_(
        _O.c.channel == ticket.channel,
        _O.c.recipient_index.in_(blind_indexes(addresses)),
        sa.or_(_O.c.tenant == ticket.tenant, _O.c.tenant.is_(None)),
    )
    about_ticket = _O.c.ticket_id == ticket.id
    wanted = sa.or_(to_requester, about_ticket) if addresses else about_ticket
    outbound = list(
        await session.exec(
            select(OutboundMessage).where(wanted).order_by(_O.c.id.desc()).limit(limit)
        )
    )
    inbound.reverse()
    outbound.reverse()
    return Transcript(inbound, outbound)


async def admin_emails(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    result = await session.exec(
        select(AdminUser.id, AdminUser.email).where(col(AdminUser.id).in_(list(ids)))
    )
    return {int(i): str(e) for i, e in result if i is not None}


# --- the audit trail ----------------------------------------------------------------------


def audit(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    at: datetime,
    ticket_id: int | None = None,
    detail: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AdminAudit:
    row = AdminAudit(
        actor=actor, action=action, at=at, ticket_id=ticket_id, detail=detail or {}, ip=ip
    )
    session.add(row)
    return row


async def audit_of_ticket(
    session: AsyncSession, ticket_id: int, *, limit: int = 50
) -> list[AdminAudit]:
    result = await session.exec(
        select(AdminAudit)
        .where(AdminAudit.ticket_id == ticket_id)
        .order_by(col(AdminAudit.id).desc())
        .limit(limit)
    )
    return list(result)


async def recent_reveal(
    session: AsyncSession, *, audit_id: int, actor: str, ticket_id: int, since: datetime
) -> bool:
    """Whether `actor` recorded revealing this ticket's contacts as `audit_id` after `since`."""
    row = await session.get(AdminAudit, audit_id)
    return (
        row is not None
        and row.actor == actor
        and row.action == "reveal_contacts"
        and row.ticket_id == ticket_id
        and row.at >= since
    )


# --- sessions and throttling --------------------------------------------------------------


async def user_by_email(session: AsyncSession, email: str) -> AdminUser | None:
    result = await session.exec(select(AdminUser).where(AdminUser.email == email))
    return result.first()


async def session_with_user(
    session: AsyncSession, token_hash: str, *, now: datetime
) -> tuple[AdminSession, AdminUser] | None:
    result = await session.exec(
        select(AdminSession, AdminUser)
        .join(AdminUser, col(AdminUser.id) == col(AdminSession.user_id))
        .where(AdminSession.token_hash == token_hash, AdminSession.expires_at > now)
    )
    row = result.first()
    return (row[0], row[1]) if row else None


async def touch_session(
    session: AsyncSession, token_hash: str, *, now: datetime, expires_at: datetime
) -> None:
    """Slide a session's idle expiry (its row is read without a write lock: see
    `admin_service.current_user`)."""
    table = AdminSession.__table__  # type: ignore[attr-defined]
    await session.exec(
        sa.update(table)
        .where(table.c.token_hash == token_hash)
        .values(last_seen_at=now, expires_at=expires_at)
    )


async def touch_token(session: AsyncSession, token_id: int, *, now: datetime) -> None:
    """Record an API token's use (at most once a minute: `handlers.api.bearer`)."""
    table = ApiToken.__table__  # type: ignore[attr-defined]
    await session.exec(sa.update(table).where(table.c.id == token_id).values(last_used_at=now))


async def end_session(session: AsyncSession, token_hash: str) -> None:
    table = AdminSession.__table__  # type: ignore[attr-defined]
    await session.exec(sa.delete(table).where(table.c.token_hash == token_hash))


async def end_expired_sessions(session: AsyncSession, *, now: datetime) -> None:
    table = AdminSession.__table__  # type: ignore[attr-defined]
    await session.exec(sa.delete(table).where(table.c.expires_at <= now))


async def failures_since(
    session: AsyncSession, *, email: str | None = None, ip: str | None = None, since: datetime
) -> int:
    table = LoginAttempt.__table__  # type: ignore[attr-defined]
    query = sa.select(sa.func.count()).where(table.c.at >= since, table.c.ok.is_(False))
    if email is not None:
        query = query.where(table.c.email == email)
    if ip is not None:
        query = query.where(table.c.ip == ip)
    result = await session.exec(query)  # type: ignore[call-overload]
    return int(result.scalar_one())


async def forget_attempts(session: AsyncSession, *, before: datetime) -> None:
    table = LoginAttempt.__table__  # type: ignore[attr-defined]
    await session.exec(sa.delete(table).where(table.c.at < before))


# --- reports and charts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KindMetrics:
    """One request type's year: received, outcomes, and days to respond."""

    kind: str
    received: int = 0
    complied: int = 0
    denied: int = 0
    withdrawn: int = 0
    expired: int = 0
    pending: int = 0
    median_days: float | None = None
    mean_days: float | None = None


async def year_metrics(
    session: AsyncSession, *, start: datetime, end: datetime, tenant: str | None
) -> tuple[list[KindMetrics], KindMetrics]:
    """Per request type and in all, the requests received in [start, end) and how they ended."""
    where = [_T.c.received_at >= _utc(start), _T.c.received_at < _utc(end)]
    if tenant is not None:
        where.append(_T.c.tenant == tenant)
    counts = await session.exec(
        sa.select(_T.c.kind, _T.c.status, sa.func.count())  # type: ignore[call-overload]
        .where(*where)
        .group_by(_T.c.kind, _T.c.status)
    )
    by_kind: dict[str, dict[str, int]] = {}
    for kind, status, count in counts:
        by_kind.setdefault(str(kind), {})[str(status)] = int(count)
    answered = [
        *where,
        _T.c.status.in_([TicketStatus.RESOLVED, TicketStatus.REJECTED]),
        _T.c.closed_at.is_not(None),
    ]
    if session.get_bind().dialect.name == "postgresql":
        days = (sa.func.extract("epoch", _T.c.closed_at - _T.c.received_at) / 86400.0).label("d")
        median = sa.func.percentile_cont(0.5).within_group(days)
        found = await session.exec(
            sa.select(_T.c.kind, median, sa.func.avg(days))  # type: ignore[call-overload]
            .where(*answered)
            .group_by(_T.c.kind)
        )
        by_kind_days = {str(k): (_num(m), _num(a)) for k, m, a in found}
        overall = (
            await session.exec(sa.select(median, sa.func.avg(days)).where(*answered))  # type: ignore[call-overload]
        ).one()
        all_days = (_num(overall[0]), _num(overall[1]))
    else:
        durations = await _response_days(session, answered)
        by_kind_days = {k: _median_mean(v) for k, v in durations.items()}
        all_days = _median_mean([d for v in durations.values() for d in v])
    rows = [
        _metrics(kind, by_kind[kind], by_kind_days.get(kind, (None, None)))
        for kind in sorted(by_kind)
    ]
    everything: dict[str, int] = {}
    for statuses in by_kind.values():
        for status, count in statuses.items():
            everything[status] = everything.get(status, 0) + count
    return rows, _metrics("all", everything, all_days)


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _median_mean(days: Sequence[float]) -> tuple[float | None, float | None]:
    if not days:
        return None, None
    return statistics.median(days), statistics.fmean(days)


def _metrics(
    kind: str, statuses: dict[str, int], days: tuple[float | None, float | None]
) -> KindMetrics:
    return KindMetrics(
        kind=kind,
        received=sum(statuses.values()),
        complied=statuses.get(TicketStatus.RESOLVED, 0),
        denied=statuses.get(TicketStatus.REJECTED, 0),
        withdrawn=statuses.get(TicketStatus.CANCELLED, 0),
        expired=statuses.get(TicketStatus.EXPIRED, 0),
        pending=sum(v for s, v in statuses.items() if s not in CLOSED_STATUSES),
        median_days=days[0],
        mean_days=days[1],
    )


async def _response_days(session: AsyncSession, where: list[Any]) -> dict[str, tuple[float, ...]]:
    """Days from receipt to response per kind, computed here (SQLite has no percentiles)."""
    result = await session.stream(
        sa.select(_T.c.kind, _T.c.received_at, _T.c.closed_at).where(*where)
    )
    days: dict[str, list[float]] = {}
    async for kind, received, closed in result:
        days.setdefault(str(kind), []).append((closed - received).total_seconds() / 86400)
    return {kind: tuple(values) for kind, values in days.items()}


async def bucket_counts(
    session: AsyncSession,
    column: str,
    edges: Sequence[datetime],
    *,
    tenant: str | None,
    extra: Sequence[Any] = (),
) -> list[int]:
    """How many tickets have `column` in each [edges[i], edges[i+1]) — one range scan."""
    c = _T.c[column]
    where: list[Any] = [c >= _utc(edges[0]), c < _utc(edges[-1]), *extra]
    if tenant is not None:
        where.append(_T.c.tenant == tenant)
    counts = [
        sa.func.count().filter(sa.and_(c >= _utc(lo), c < _utc(hi))) for lo, hi in pairwise(edges)
    ]
    result = await session.exec(sa.select(*counts).where(*where))  # type: ignore[call-overload]
    return [int(v) for v in result.one()]


async def on_time_counts(
    session: AsyncSession, edges: Sequence[datetime], *, tenant: str | None
) -> list[tuple[int, int]]:
    """Per [edges[i], edges[i+1]): answered tickets closed then, and how many by their deadline."""
    answered = _T.c.status.in_([TicketStatus.RESOLVED, TicketStatus.REJECTED])
    on_time = sa.and_(_T.c.due_at.is_not(None), _T.c.closed_at <= _T.c.due_at)
    totals = await bucket_counts(session, "closed_at", edges, tenant=tenant, extra=[answered])
    good = await bucket_counts(
        session, "closed_at", edges, tenant=tenant, extra=[answered, on_time]
    )
    return list(zip(totals, good, strict=True))


async def open_by_days_left(
    session: AsyncSession, edges: Sequence[datetime], *, tenant: str | None
) -> tuple[list[int], int]:
    """Active tickets whose deadline falls in each bucket, and those with no deadline yet."""
    c = _T.c.due_at
    where: list[Any] = [ACTIVE_SQL]
    if tenant is not None:
        where.append(_T.c.tenant == tenant)
    counts = [
        sa.func.count().filter(sa.and_(c >= _utc(lo), c < _utc(hi))) for lo, hi in pairwise(edges)
    ]
    counts.append(sa.func.count().filter(c.is_(None)))
    result = await session.exec(sa.select(*counts).where(*where))  # type: ignore[call-overload]
    values = [int(v) for v in result.one()]
    return values[:-1], values[-1]


# --- suppressions -------------------------------------------------------------------------


async def page_suppressions(
    session: AsyncSession,
    *,
    tenant: str | None,
    category: str | None,
    channel: str | None,
    after_id: int,
    limit: int,
) -> tuple[list[Suppression], int | None]:
    query = select(Suppression).where(col(Suppression.id) > after_id)
    if tenant is not None:
        query = query.where(Suppression.tenant == tenant)
    if category is not None:
        query = query.where(Suppression.category == category)
    if channel is not None:
        query = query.where(Suppression.channel == channel)
    rows = list(await session.exec(query.order_by(col(Suppression.id)).limit(limit + 1)))
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, rows[-1].id
    return rows, None


# --- the sandbox --------------------------------------------------------------------------


async def sandbox_chats(session: AsyncSession, *, limit: int = 50) -> list[SandboxChat]:
    result = await session.exec(
        select(SandboxChat).order_by(col(SandboxChat.id).desc()).limit(limit)
    )
    return list(result)


async def sandbox_tickets(session: AsyncSession, chat: SandboxChat) -> list[Ticket]:
    """Tickets filed by the sandbox customer, newest first."""
    requesters = sa.select(Conversation.requester_id).where(  # type: ignore[call-overload]
        Conversation.channel == chat.channel,
        Conversation.address_index == chat.address_index,
        col(Conversation.requester_id).is_not(None),
    )
    result = await session.exec(
        select(Ticket)
        .where(col(Ticket.requester_id).in_(requesters))
        .order_by(col(Ticket.id).desc())
    )
    return list(result)


async def sandbox_messages(
    session: AsyncSession, chat: SandboxChat, ticket_ids: Sequence[int], *, limit: int = 300
) -> tuple[list[InboundMessage], list[OutboundMessage]]:
    """The customer's messages, the replies, and everything queued about their tickets."""
    inbound = await session.exec(
        select(InboundMessage)
        .where(
            InboundMessage.channel == chat.channel,
            InboundMessage.sender_index == chat.address_index,
        )
        .order_by(col(InboundMessage.id).desc())
        .limit(limit)
    )
    mine = sa.and_(_O.c.channel == chat.channel, _O.c.recipient_index == chat.address_index)
    wanted = sa.or_(mine, _O.c.ticket_id.in_(list(ticket_ids))) if ticket_ids else mine
    outbound = await session.exec(
        select(OutboundMessage).where(wanted).order_by(_O.c.id.desc()).limit(limit)
    )
    return list(reversed(list(inbound))), list(reversed(list(outbound)))


# --- the webhook relay ------------------------------------------------------------------------


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def relay_position(session: AsyncSession, *, now: datetime) -> tuple[int, int]:
    """The relay's (high-water mark, floor), locked for this transaction. A new relay starts
    at the log's end: the events before it are history and are never sent."""
    table = WebhookRelay.__table__  # type: ignore[attr-defined]
    newest = await session.exec(sa.select(sa.func.coalesce(sa.func.max(_E.c.id), 0)))  # type: ignore[call-overload]
    start = int(newest.scalar_one())
    await session.exec(
        _insert(session)(table)
        .values(id=1, last_event_id=start, floor_event_id=start, updated_at=now)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    result = await session.exec(
        sa.select(table.c.last_event_id, table.c.floor_event_id)  # type: ignore[call-overload]
        .where(table.c.id == 1)
        .with_for_update()
    )
    last, floor = result.one()
    return int(last), int(floor)


async def move_relay(session: AsyncSession, *, to: int, now: datetime) -> None:
    table = WebhookRelay.__table__  # type: ignore[attr-defined]
    await session.exec(
        sa.update(table)
        .where(table.c.id == 1, table.c.last_event_id < to)
        .values(last_event_id=to, updated_at=now)
    )


async def events_after(
    session: AsyncSession, *, after_id: int, tenants: Sequence[str], limit: int
) -> list[tuple[TicketEvent, Ticket]]:
    """Events past `after_id` of tickets of these tenants, oldest first, with their ticket."""
    result = await session.exec(
        select(TicketEvent, Ticket)
        .join(Ticket, col(Ticket.id) == col(TicketEvent.ticket_id))
        .where(col(TicketEvent.id) > after_id, col(Ticket.tenant).in_(list(tenants)))
        .order_by(col(TicketEvent.id))
        .limit(limit)
    )
    return [(event, ticket) for event, ticket in result]


async def existing_dedupe_keys(session: AsyncSession, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    result = await session.exec(
        sa.select(_O.c.dedupe_key).where(_O.c.dedupe_key.in_(list(keys)))  # type: ignore[call-overload]
    )
    return {str(key) for (key,) in result}


async def webhook_deliveries(session: AsyncSession, *, limit: int = 50) -> list[OutboundMessage]:
    result = await session.exec(
        select(OutboundMessage)
        .where(OutboundMessage.channel == "webhook")
        .order_by(col(OutboundMessage.id).desc())
        .limit(limit)
    )
    return list(result)
