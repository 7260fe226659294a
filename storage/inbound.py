"""Inbound messages: stored once before they are acknowledged, processed until done."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import InboundMessage

_T = InboundMessage.__table__  # type: ignore[attr-defined]

# After this many failed attempts a message is parked: kept, counted in /metrics and
# shown to admins, but no longer retried or holding back its sender's later messages.
MAX_ATTEMPTS = 12


async def store(
    session: AsyncSession,
    *,
    channel: str,
    provider_id: str,
    kind: str,
    sender: str,
    tenant: str | None,
    payload: dict[str, Any],
    now: datetime,
) -> int | None:
    """Insert the message unless its provider id was seen; the new row's id, or None."""
    values = {
        "channel": channel,
        "provider_id": provider_id,
        "kind": kind,
        "sender": sender,
        "tenant": tenant,
        "payload": payload,
        "received_at": now,
        "next_attempt_at": now,
        "attempts": 0,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(_T)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["channel", "provider_id"])
        .returning(_T.c.id)
    )
    result = await session.exec(statement)
    row = result.first()
    return int(row[0]) if row else None


async def claim(
    session: AsyncSession, *, now: datetime, lease: timedelta, limit: int
) -> Sequence[InboundMessage]:
    """Take due unprocessed messages, at most one per sender, oldest first."""
    older = _T.alias("older")
    due = sa.and_(
        _T.c.processed_at.is_(None),
        _T.c.attempts < MAX_ATTEMPTS,
        _T.c.next_attempt_at <= now,
        sa.or_(_T.c.locked_until.is_(None), _T.c.locked_until < now),
    )
    earlier_pending = (
        sa.select(older.c.id)
        .where(
            older.c.channel == _T.c.channel,
            older.c.sender == _T.c.sender,
            older.c.id < _T.c.id,
            older.c.processed_at.is_(None),
            older.c.attempts < MAX_ATTEMPTS,
        )
        .exists()
    )
    candidates = (
        select(col(InboundMessage.id))
        .where(due, ~earlier_pending)
        .order_by(_T.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(await session.exec(candidates))
    if not ids:
        return []
    await session.exec(
        sa.update(_T)
        .where(_T.c.id.in_(ids))
        .values(locked_until=now + lease, attempts=_T.c.attempts + 1)
    )
    rows = await session.exec(
        select(InboundMessage)
        .where(col(InboundMessage.id).in_(ids))
        .order_by(col(InboundMessage.id))
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def lock_for_processing(session: AsyncSession, message_id: int) -> InboundMessage | None:
    """Re-read the message under a row lock; None if another worker already processed it."""
    result = await session.exec(
        select(InboundMessage)
        .where(InboundMessage.id == message_id, col(InboundMessage.processed_at).is_(None))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.first()


async def mark_processed(session: AsyncSession, message_id: int, *, now: datetime) -> None:
    await session.exec(
        sa.update(_T)
        .where(_T.c.id == message_id)
        .values(processed_at=now, locked_until=None, last_error=None)
    )


async def mark_retry(session: AsyncSession, message_id: int, *, at: datetime, error: str) -> None:
    await session.exec(
        sa.update(_T)
        .where(_T.c.id == message_id)
        .values(next_attempt_at=at, locked_until=None, last_error=error[:500])
    )


async def counts(session: AsyncSession) -> tuple[int, int]:
    """(waiting to be processed, parked after too many failures)."""
    parked = _T.c.attempts >= MAX_ATTEMPTS
    query = sa.select(sa.func.count().filter(~parked), sa.func.count().filter(parked))
    result = await session.exec(query.where(_T.c.processed_at.is_(None)))  # type: ignore[call-overload]
    waiting, stuck = result.one()
    return int(waiting), int(stuck)
