"""The durable outbox: queue in the caller's transaction, claim exclusively, record the end."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.enums import OutboxStatus
from storage.models import OutboundMessage

_T = OutboundMessage.__table__  # type: ignore[attr-defined]
IN_DOUBT = "in doubt since "  # last_error of an attempt that timed out: the provider may have it


def enqueue(
    session: AsyncSession,
    *,
    channel: str,
    recipient: str,
    payload: dict[str, Any],
    tenant: str | None = None,
    ticket_id: int | None = None,
    dedupe_key: str | None = None,
    not_before: datetime | None = None,
) -> OutboundMessage:
    """Add a message to the outbox; it is sent only if the caller's transaction commits."""
    message = OutboundMessage(
        channel=channel,
        recipient=recipient,
        payload=payload,
        tenant=tenant,
        ticket_id=ticket_id,
        dedupe_key=dedupe_key,
    )
    if not_before is not None:
        message.next_attempt_at = not_before
    session.add(message)
    return message


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message taken for sending; `in_doubt_since` is set when an earlier attempt died
    mid-send after that moment, so the provider may already have it."""

    message: OutboundMessage
    in_doubt_since: datetime | None = None


async def claim(
    session: AsyncSession, *, worker: str, now: datetime, lease: timedelta, limit: int
) -> list[Claimed]:
    """Take up to `limit` due messages, at most one per recipient, oldest first.

    A message is due when it is pending (or its sender's lease ran out, i.e. the process
    died mid-send) and nothing older to the same recipient is still waiting: customers
    get their messages in order. On PostgreSQL, SKIP LOCKED lets several workers claim
    side by side without ever taking the same row.
    """
    older = _T.alias("older")
    claimable = sa.or_(
        _T.c.status == OutboxStatus.PENDING,
        sa.and_(_T.c.status == OutboxStatus.SENDING, _T.c.locked_until < now),
    )
    waiting_before = (
        sa.select(older.c.id)
        .where(
            older.c.channel == _T.c.channel,
            older.c.recipient_index == _T.c.recipient_index,
            older.c.id < _T.c.id,
            older.c.status.in_([OutboxStatus.PENDING, OutboxStatus.SENDING]),
        )
        .exists()
    )
    candidates = (
        sa.select(_T.c.id, _T.c.status, _T.c.locked_until, _T.c.last_error)
        .where(claimable, _T.c.next_attempt_at <= now, ~waiting_before)
        .order_by(_T.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    found = list(await session.exec(candidates))  # type: ignore[call-overload]
    if not found:
        return []
    ids = [row.id for row in found]
    # The attempt that died began one lease before its lease ran out (a little slack added).
    doubt = {row.id: when for row in found if (when := _in_doubt_since(row, lease)) is not None}
    await session.exec(
        sa.update(_T)
        .where(_T.c.id.in_(ids))
        .values(
            status=OutboxStatus.SENDING,
            locked_by=worker,
            locked_until=now + lease,
            attempts=_T.c.attempts + 1,
        )
    )
    for message_id, since in doubt.items():  # rare: only after a crash or a timeout
        # kept on the row: if this attempt dies too, the next one asks the provider from
        # the first attempt that may have reached it, not from this one
        await session.exec(
            sa.update(_T).where(_T.c.id == message_id).values(last_error=in_doubt(since))
        )
    rows = await session.exec(
        select(OutboundMessage)
        .where(col(OutboundMessage.id).in_(ids))
        .order_by(col(OutboundMessage.id))
        .execution_options(populate_existing=True)
    )
    return [Claimed(row, doubt.get(row.id or 0)) for row in rows]


def in_doubt(since: datetime) -> str:
    """The `last_error` of a message the provider may have had since `since`."""
    return f"{IN_DOUBT}{since.isoformat()}"


def _in_doubt_since(row: Any, lease: timedelta) -> datetime | None:
    """When the provider may have got this message already, from when on (the earliest
    attempt that may have reached it); else None."""
    found: list[datetime] = []
    if row.status == OutboxStatus.SENDING and row.locked_until is not None:
        # The attempt that died began one lease before its lease ran out (slack added).
        locked_until: datetime = row.locked_until
        found.append(locked_until - lease - timedelta(seconds=5))
    if row.last_error and row.last_error.startswith(IN_DOUBT):
        with contextlib.suppress(ValueError):
            found.append(datetime.fromisoformat(row.last_error.removeprefix(IN_DOUBT)))
    return min(found, default=None)


async def _finish(session: AsyncSession, message_id: int, worker: str, **values: Any) -> bool:
    """Record an outcome only while we still hold the claim (a stale worker changes nothing)."""
    result = await session.exec(
        sa.update(_T)
        .where(
            _T.c.id == message_id,
            _T.c.status == OutboxStatus.SENDING,
            _T.c.locked_by == worker,
        )
        .values(locked_until=None, **values)
    )
    return bool(result.rowcount)


async def mark_sent(
    session: AsyncSession, message_id: int, *, worker: str, provider_id: str | None, now: datetime
) -> bool:
    return await _finish(
        session,
        message_id,
        worker,
        status=OutboxStatus.SENT,
        provider_id=provider_id,
        sent_at=now,
        last_error=None,
    )


async def mark_retry(
    session: AsyncSession, message_id: int, *, worker: str, at: datetime, error: str
) -> bool:
    """Try again at `at`. A message in doubt stays in doubt, from its first moment of doubt
    (`claim` put it on the row): the provider may have had it since then, and whether it
    did is still not known, whatever went wrong with this attempt."""
    kept = sa.case(
        (_T.c.last_error.startswith(IN_DOUBT, autoescape=True), _T.c.last_error),
        else_=sa.literal(error[:500]),
    )
    return await _finish(
        session,
        message_id,
        worker,
        status=OutboxStatus.PENDING,
        next_attempt_at=at,
        last_error=kept,
    )


async def mark_failed(session: AsyncSession, message_id: int, *, worker: str, error: str) -> bool:
    return await _finish(
        session, message_id, worker, status=OutboxStatus.FAILED, last_error=error[:500]
    )


async def depth(session: AsyncSession) -> int:
    """How many messages wait to be sent (pending or in flight)."""
    result = await session.exec(
        select(sa.func.count()).where(
            col(OutboundMessage.status).in_([OutboxStatus.PENDING, OutboxStatus.SENDING])
        )
    )
    return int(result.one())


async def record_status(session: AsyncSession, *, provider_id: str, status: str) -> int | None:
    """Store a provider's delivery status for the message it names; its id if known."""
    result = await session.exec(
        sa.update(_T)
        .where(_T.c.provider_id == provider_id)
        .values(provider_status=status[:32])
        .returning(_T.c.id)
    )
    row = result.first()
    return int(row[0]) if row else None
