"""Inbound messages: stored once before they are acknowledged, processed until done."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import writing
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


_STORE_COLUMNS = (
    "channel",
    "provider_id",
    "kind",
    "sender",
    "tenant",
    "payload",
    "received_at",
    "next_attempt_at",
    "attempts",
)


_Prepared = tuple[str, tuple[Callable[[Any], Any] | None, ...]]
_PREPARED: dict[tuple[str, str], _Prepared] = {}


def _store_statement(dialect: Dialect) -> _Prepared:
    """`store`'s INSERT in the driver's own parameter style, and each value's converter."""
    key = (dialect.name, dialect.driver)
    if key not in _PREPARED:
        _PREPARED[key] = _prepare_store(dialect)
    return _PREPARED[key]


def _prepare_store(dialect: Dialect) -> _Prepared:
    marks = (
        [f"${n}" for n in range(1, len(_STORE_COLUMNS) + 1)]
        if dialect.name == "postgresql"
        else ["?"] * len(_STORE_COLUMNS)
    )
    sql = (
        f"INSERT INTO {_T.name} ({', '.join(_STORE_COLUMNS)}) VALUES ({', '.join(marks)}) "
        "ON CONFLICT (channel, provider_id) DO NOTHING RETURNING id"
    )
    return sql, tuple(_T.c[name].type.bind_processor(dialect) for name in _STORE_COLUMNS)


async def store_now(
    engine: AsyncEngine,
    *,
    channel: str,
    provider_id: str,
    kind: str,
    sender: str,
    tenant: str | None,
    payload: dict[str, Any],
    now: datetime,
) -> int | None:
    """`store` for a webhook: one statement, committed on its own, on the driver's connection.

    A webhook's only write is this INSERT, so it needs no transaction around it. Through an
    ORM session the same write took nine hand-offs to aiosqlite's thread (BEGIN, cursor,
    INSERT, fetch, COMMIT, …) and a cache-key walk of the statement each time; here it is
    one call (`execute_fetchall`) on SQLite and one round trip (`fetchval`) on PostgreSQL,
    with the same column types (sealing, UTC) applied to the values. Driver errors come out
    as SQLAlchemy's OperationalError and the connection is dropped from the pool.
    """
    sql, converters = _store_statement(engine.dialect)
    raw = (
        channel, provider_id, kind, sender, tenant, payload, now, now, 0,
    )  # fmt: skip
    params = [
        value if convert is None else convert(value)
        for value, convert in zip(raw, converters, strict=True)
    ]
    async with writing(engine):
        connection = await engine.raw_connection()
        try:
            driver: Any = connection.driver_connection
            if engine.dialect.name == "postgresql":
                row_id = await driver.fetchval(sql, *params)
            else:
                rows = await driver.execute_fetchall(sql, params)
                row_id = rows[0][0] if rows else None
        except (asyncio.CancelledError, SQLAlchemyError) as exc:
            await _drop_if_broken(connection, exc)
            raise
        except Exception as exc:  # the driver's own (sqlite3, asyncpg, OSError)
            await _drop_if_broken(connection, exc)
            raise sa.exc.OperationalError(sql, None, exc) from exc
        finally:
            await greenlet_spawn(connection.close)  # back to the pool, reset as SQLAlchemy does
    return None if row_id is None else int(row_id)


async def _drop_if_broken(connection: Any, exc: BaseException) -> None:
    """Keep a connection out of the pool unless it is known to be fine: an error reported
    by the server (asyncpg's PostgresError) or any SQLite error (a file, not a socket)
    leaves it usable; a network error or a cancelled PostgreSQL call may not."""
    driver = type(connection.driver_connection).__module__
    if driver.startswith("aiosqlite"):
        return
    if isinstance(exc, asyncpg.PostgresError):
        return
    await greenlet_spawn(connection.invalidate)


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
