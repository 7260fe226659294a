"""Inbound messages: stored once before they are acknowledged, processed until done."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
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

from storage.crypto import blind_index
from storage.db import create_engine, writing
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
    """Insert the message unless its provider id was seen; the new row's id, or None.

    Only the blind index of `sender` is stored (the address itself is in the sealed payload).
    """
    values = {
        "channel": channel,
        "provider_id": provider_id,
        "kind": kind,
        "sender_index": blind_index(sender),
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
    "sender_index",
    "tenant",
    "payload",
    "received_at",
    "next_attempt_at",
    "attempts",
)


async def store_now(
    engine: AsyncEngine,
    *,
    journal: Journal | None = None,
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
    INSERT, fetch, COMMIT, …) and a cache-key walk of the statement each time; here the
    values get the same column types (sealing, UTC) and go to the driver directly, and the
    webhooks that arrive while a write is under way are written together by the next one,
    a multi-row INSERT (group commit, `_GroupCommit`): one call to aiosqlite's thread or
    one round trip to PostgreSQL for all of them. Driver errors come out as SQLAlchemy's
    OperationalError.
    """
    raw = (
        channel, provider_id, kind, blind_index(sender), tenant, payload, now, now, 0,
    )  # fmt: skip
    converters = _converters(engine.dialect)
    params = [
        value if convert is None else convert(value)
        for value, convert in zip(raw, converters, strict=True)
    ]
    target, table = (engine, _T.name) if journal is None else (journal.engine, Journal.TABLE)
    group = _GROUPS.get(target.sync_engine.pool)
    if group is None:
        group = _GROUPS[target.sync_engine.pool] = _GroupCommit(target, table)
    return await group.store((channel, provider_id), params)


def _converters(dialect: Dialect) -> tuple[Callable[[Any], Any] | None, ...]:
    """Each stored column's bind processor: what SQLAlchemy would apply to the value."""
    key = (dialect.name, dialect.driver)
    if key not in _CONVERTERS:
        _CONVERTERS[key] = tuple(_T.c[name].type.bind_processor(dialect) for name in _STORE_COLUMNS)
    return _CONVERTERS[key]


_CONVERTERS: dict[tuple[str, str], tuple[Callable[[Any], Any] | None, ...]] = {}


def _insert_sql(dialect: Dialect, *, rows: int, returning: str | None, table: str = _T.name) -> str:
    width = len(_STORE_COLUMNS)
    if dialect.name == "postgresql":
        groups = [
            "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")"
            for r in range(rows)
        ]
    else:
        groups = ["(" + ", ".join("?" * width) + ")"] * rows
    return (
        f"INSERT INTO {table} ({', '.join(_STORE_COLUMNS)}) VALUES {', '.join(groups)} "
        "ON CONFLICT (channel, provider_id) DO NOTHING"
        + (f" RETURNING {returning}" if returning else "")
    )


async def _on_driver(
    engine: AsyncEngine,
    sql: str,
    call: Callable[[Any], Awaitable[Any]],
    *,
    urgent: bool = True,
) -> Any:
    """`call(driver connection)` on a pooled connection, SQLite's write turn held (`urgent`,
    a webhook's: before the workers' transactions waiting for theirs)."""
    async with writing(engine, urgent=urgent):
        return await _on_connection(engine, sql, call)


async def _on_connection(
    engine: AsyncEngine, sql: str, call: Callable[[Any], Awaitable[Any]]
) -> Any:
    """`call(driver connection)` on a pooled connection; driver errors as SQLAlchemy's."""
    connection = await engine.raw_connection()
    try:
        return await call(connection.driver_connection)
    except (asyncio.CancelledError, SQLAlchemyError) as exc:
        await _drop_if_broken(connection, exc)
        raise
    except Exception as exc:  # the driver's own (sqlite3, asyncpg, OSError)
        await _drop_if_broken(connection, exc)
        raise sa.exc.OperationalError(sql, None, exc) from exc
    finally:
        await greenlet_spawn(connection.close)  # back to the pool, reset as SQLAlchemy does


@dataclass(eq=False)
class _Waiting:
    key: tuple[str, str]  # (channel, provider_id)
    params: list[Any]
    done: asyncio.Future[int | None]


class _GroupCommit:
    """Webhooks, written together: while one INSERT is under way, those that
    arrive wait for it and then go in the next one, up to `MAX_ROWS` rows a statement.

    One multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING channel, provider_id, id` is
    one transaction: every webhook in it is stored, or (an error) none is and each of
    them answers 503 to be sent again. A repeat inside one statement is a repeat as it
    would be across two: the first is stored, the others get None.
    """

    MAX_ROWS = 500  # × 9 values, well inside SQLite's 32,766 parameters

    def __init__(self, engine: AsyncEngine, table: str) -> None:
        self._engine = weakref.ref(engine)  # held by the pool's entry in _GROUPS: not owned
        self._table = table
        self._queue: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, key: tuple[str, str], params: list[Any]) -> int | None:
        waiting = _Waiting(key, params, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="inbound-group-commit")
        return await waiting.done

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self.MAX_ROWS]
            del self._queue[: self.MAX_ROWS]
            await self._write(batch)

    async def _write(self, batch: list[_Waiting]) -> None:
        engine = self._engine()
        try:
            if engine is None:
                raise sa.exc.OperationalError("INSERT", None, Exception("engine disposed"))
            sql = _insert_sql(
                engine.dialect,
                rows=len(batch),
                returning="channel, provider_id, id",
                table=self._table,
            )
            values = [value for waiting in batch for value in waiting.params]
            postgres = engine.dialect.name == "postgresql"

            async def insert(driver: Any) -> Any:  # asyncpg's or aiosqlite's connection
                if postgres:
                    return await driver.fetch(sql, *values)
                return await driver.execute_fetchall(sql, values)

            rows = await _on_driver(engine, sql, insert)
        except Exception as exc:  # this batch answers 503; the next one is tried anew
            for waiting in batch:
                _settle(waiting, error=exc)
            return
        except BaseException:  # cancelled (shutdown): every webhook waiting gets its answer
            for waiting in [*batch, *self._queue]:
                _settle(waiting, error=_stopped())
            self._queue.clear()
            raise
        stored = {(str(channel), str(pid)): int(row_id) for channel, pid, row_id in rows}
        for waiting in batch:
            _settle(waiting, result=stored.pop(waiting.key, None))  # a repeat finds it gone


def _stopped() -> Exception:
    return sa.exc.OperationalError("INSERT", None, Exception("stopped before it was written"))


def _settle(
    waiting: _Waiting, *, result: int | None = None, error: BaseException | None = None
) -> None:
    if waiting.done.done():  # its webhook went away (the client hung up); the row stays
        return
    if error is not None:
        waiting.done.set_exception(error)
    else:
        waiting.done.set_result(result)


_GROUPS: weakref.WeakKeyDictionary[Any, _GroupCommit] = weakref.WeakKeyDictionary()


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


class Journal:
    """SQLite only: a file of its own where the webhooks store their messages first.

    SQLite has one writer per file, and under load the inbox worker's transaction for one
    message holds it 18 ms on average (`bench/README.md`, session 6): a webhook arriving
    meanwhile waited for it, which put SQLite's p99 over 50 ms at 200 messages a second.
    Here a webhook's INSERT takes the journal's write lock, which only the webhooks and
    `forget` take. The inbox worker copies what the journal holds into `inbound_message` at
    the start of each claim, inside the claim's transaction, and deletes it from the journal
    once that has committed. A crash between the two copies it again, and the main table's
    unique (channel, provider_id) drops the repeat: a message is neither lost nor taken
    twice. Journal ids only grow (AUTOINCREMENT), so "moved up to id N" is exact.
    """

    TABLE = "inbound_journal"
    MOVE = 500  # rows copied into the main database per claim, at most

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = create_engine(f"sqlite+aiosqlite:///{path}")

    @classmethod
    def beside(cls, database_url: str) -> Journal | None:
        """The journal of a SQLite database file (`x.db` → `x.inbox.db`); None otherwise."""
        path = cls.path_beside(database_url)
        return None if path is None else cls(path)

    @staticmethod
    def path_beside(database_url: str) -> Path | None:
        """Where `beside` keeps the journal of this database; None if it has none."""
        url = sa.make_url(database_url)
        if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
            return None
        path = Path(str(url.database))
        return path.with_name(f"{path.stem}.inbox{path.suffix or '.db'}")

    async def open(self) -> None:
        """Create the journal's table on its first start (it holds rows in flight only:
        no migrations, the main database's `inbound_message` columns as stored)."""
        sql = (
            f"CREATE TABLE IF NOT EXISTS {self.TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            f"{', '.join(_STORE_COLUMNS)}, UNIQUE (channel, provider_id))"
        )
        await _on_driver(self.engine, sql, lambda driver: driver.execute_fetchall(sql))

    async def close(self) -> None:
        await self.engine.dispose()

    async def take(self) -> list[tuple[Any, ...]]:
        """The oldest rows, id first, `MOVE` at most (a read: no lock, no turn)."""
        sql = (
            f"SELECT id, {', '.join(_STORE_COLUMNS)} FROM {self.TABLE} "
            f"ORDER BY id LIMIT {self.MOVE}"
        )
        rows = await _on_connection(self.engine, sql, lambda driver: driver.execute_fetchall(sql))
        return [tuple(row) for row in rows]

    async def move(self, session: AsyncSession, rows: Sequence[tuple[Any, ...]]) -> None:
        """Copy `rows` (from `take`) into `inbound_message` in `session`'s transaction; a
        message already there (moved before a crash, or a provider's repeat) is skipped."""
        if not rows:
            return
        connection = await session.connection()
        sql = _insert_sql(connection.dialect, rows=1, returning=None)
        await connection.exec_driver_sql(sql, [tuple(row[1:]) for row in rows])

    async def forget(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Delete what `move` copied and its transaction committed."""
        if not rows:
            return
        sql = f"DELETE FROM {self.TABLE} WHERE id <= ?"
        last = rows[-1][0]
        await _on_driver(
            self.engine, sql, lambda driver: driver.execute_fetchall(sql, (last,)), urgent=False
        )

    async def waiting(self) -> int:
        """Messages stored and not yet moved (for /metrics)."""
        sql = f"SELECT count(*) FROM {self.TABLE}"
        rows = await _on_connection(self.engine, sql, lambda driver: driver.execute_fetchall(sql))
        return int(next(iter(rows))[0])


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
            older.c.sender_index == _T.c.sender_index,
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
