"""The engine, the session factory and migrations, for SQLite and PostgreSQL alike.

SQLite has one writer at a time. A transaction that writes (`transaction()`, or
`engine.begin()`) starts with `BEGIN IMMEDIATE`, taking the write lock up front so that two
writers queue rather than deadlock upgrading read locks; inside one process writers also
queue for a turn first (`WriteTurns`), so a waiting writer awaits its turn instead of
sleeping in SQLite's busy handler (1, 2, 5 … 100 ms between tries, which put 0.5–1.5 s tails
on webhooks: `bench/README.md`); a webhook's write goes before the workers' waiting ones.
A plain session (`sessions()` without `transaction()`) only reads: it starts with a
deferred `BEGIN` and, under WAL, never waits for a writer.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

MIGRATIONS = Path(__file__).parent / "migrations"

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and write-locking transactions."""
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        # No rollback on check-in: sessions and connections end their transactions
        # themselves, and the webhooks' one statement commits on its own; that reset was
        # one more hand-off to aiosqlite's thread per checkout.
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_reset_on_return=None)
        _tune_sqlite(engine)
        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800
    )


def _ensure_sqlite_dir(url: str) -> None:
    path = sa.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _tune_sqlite(engine: AsyncEngine) -> None:
    """Let SQLite serialise writers instead of failing them (SQLAlchemy's pysqlite recipe)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_READ_ONLY):
            conn.exec_driver_sql("BEGIN")  # a reader: WAL gives it a snapshot, no lock
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


_READ_ONLY = "rightsdesk_read_only"
WRITER_WAIT = 30.0  # seconds, as SQLite's own busy_timeout


class WriteTurns:
    """One writer at a time, urgent ones first: a lock with two queues, each in order.

    A webhook's INSERT (urgent) waits for the write under way, never for the workers'
    transactions queued behind it; a worker still gets its turn whenever no webhook waits.
    A released turn passes straight to the next waiter, so no newcomer slips in between.
    """

    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in (*self._urgent, *self._others))

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._held:  # free: nobody waits either (a release hands the turn on)
            self._held = True
            return
        turn = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._others).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted as it was cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._others):
            while queue:
                turn = queue.popleft()
                if not turn.done():  # a cancelled waiter is skipped
                    turn.set_result(None)
                    return
        self._held = False


_WRITERS: weakref.WeakKeyDictionary[Any, WriteTurns] = weakref.WeakKeyDictionary()


def session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions for `engine`; on SQLite a session not opened by `transaction()` reads only."""
    bind = engine.execution_options(**{_READ_ONLY: True}) if _is_sqlite(engine) else engine
    return async_sessionmaker(bind, class_=AsyncSession, expire_on_commit=False)


def _is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


@asynccontextmanager
async def transaction(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session inside one transaction: committed on success, rolled back on error."""
    bind = factory.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or not _is_sqlite(bind):
        async with factory() as session, session.begin():
            yield session
        return
    async with writing(bind), factory() as session, session.begin():
        await session.connection(execution_options={_READ_ONLY: False})
        yield session


@asynccontextmanager
async def writing(engine: AsyncEngine, *, urgent: bool = False) -> AsyncIterator[None]:
    """On SQLite, this process's turn to write to `engine`'s database (`urgent`: before
    the others waiting); elsewhere nothing."""
    if not _is_sqlite(engine):
        yield
        return
    writers = _WRITERS.get(engine.sync_engine.pool)
    if writers is None:
        writers = _WRITERS[engine.sync_engine.pool] = WriteTurns()
    try:
        # Not wait_for: on 3.11 it runs acquire() as a task of its own, whose turn is lost
        # when the wait is cancelled just as it is granted.
        async with asyncio.timeout(WRITER_WAIT):
            await writers.acquire(urgent=urgent)
    except TimeoutError:
        raise sa.exc.OperationalError(
            "BEGIN IMMEDIATE", None, Exception("database is locked (waited for a writer)")
        ) from None
    try:
        yield
    finally:
        writers.release()


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    if connection.dialect.name == "postgresql":
        # Two release processes at once: the second waits, then finds nothing to do.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727465)")
    command.upgrade(config, revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision`."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


async def is_empty(engine: AsyncEngine) -> bool:
    """True when the database has no tables of ours at all (a first start)."""
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    return "alembic_version" not in names and "ticket" not in names


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        try:
            result = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        except sa.exc.DBAPIError:
            return None
        return result.scalar_one_or_none()


async def ping(engine: AsyncEngine) -> None:
    """Raise unless the database answers a trivial query."""
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
