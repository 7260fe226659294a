"""SQLite: webhooks store into a journal file of their own, and the inbox worker moves each
message into the main database once, in order, whatever crashes in between."""

from __future__ import annotations

import asyncio
import base64
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.inbox import InboxWorker
from storage import crypto, inbound, rotation
from storage.db import create_engine, session_factory, transaction
from storage.inbound import Journal
from storage.models import InboundMessage, utcnow
from tests.conftest import TEST_DATA_KEY, TEST_INDEX_KEY

SENDER = "whatsapp:+923001234567"


@pytest_asyncio.fixture
async def main_db(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[Path]:
    path = tmp_path / "rightsdesk.db"
    shutil.copy(sqlite_template, path)
    yield path


@pytest_asyncio.fixture
async def engine(main_db: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{main_db}")
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def journal(main_db: Path) -> AsyncIterator[Journal]:
    journal = Journal.beside(f"sqlite+aiosqlite:///{main_db}")
    assert journal is not None
    await journal.open()
    yield journal
    await journal.close()


async def _webhook(engine: AsyncEngine, journal: Journal, provider_id: str) -> int | None:
    return await inbound.store_now(
        engine,
        journal=journal,
        channel="whatsapp",
        provider_id=provider_id,
        kind="message",
        sender=SENDER,
        tenant="optician-dynamics",
        payload={"MessageSid": provider_id, "Body": f"text of {provider_id}"},
        now=utcnow(),
    )


class Recorder:
    """An inbox handler that notes each message it is given, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, session: AsyncSession, message: InboundMessage) -> None:
        self.seen.append(message.payload["Body"])


async def _drain(worker: InboxWorker) -> None:
    while await worker.run_once():
        pass


async def _main_rows(engine: AsyncEngine) -> list[InboundMessage]:
    async with session_factory(engine)() as session:
        return list(await session.exec(select(InboundMessage).order_by(InboundMessage.id)))  # type: ignore[arg-type]


def test_only_a_sqlite_file_has_a_journal(tmp_path: Path) -> None:
    beside = Journal.beside(f"sqlite+aiosqlite:///{tmp_path}/data/rightsdesk.db")
    assert beside is not None and beside.path == tmp_path / "data" / "rightsdesk.inbox.db"
    assert Journal.beside("sqlite+aiosqlite:///:memory:") is None
    assert Journal.beside("postgresql+asyncpg://127.0.0.1/test") is None


async def test_a_webhook_is_stored_while_the_main_database_is_being_written(
    engine: AsyncEngine, journal: Journal, main_db: Path
) -> None:
    """Another connection holds the main file's write lock (as the inbox worker's
    transaction does): the webhook's message is stored all the same, counted as waiting,
    and moved in and processed once the lock is free."""
    writer = sqlite3.connect(main_db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE inbound_message SET attempts = attempts")
        async with asyncio.timeout(10):  # SQLite would wait 30 s for the main file's lock
            row_id = await _webhook(engine, journal, "SM-locked")
        assert row_id is not None
        assert await journal.waiting() == 1
        assert await _main_rows(engine) == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    recorder = Recorder()
    await _drain(InboxWorker(session_factory(engine), recorder, journal=journal))
    assert recorder.seen == ["text of SM-locked"]
    assert await journal.waiting() == 0
    [row] = await _main_rows(engine)
    assert row.provider_id == "SM-locked" and row.processed_at is not None
    assert row.sender_index == crypto.blind_index(SENDER)


async def test_a_move_repeated_after_a_crash_takes_each_message_once_in_order(
    engine: AsyncEngine, journal: Journal
) -> None:
    """The worker copied the journal into the main database and stopped before deleting
    it there; a provider then sent one message again. The next pass skips what is already
    in, processes each message once, and keeps the sender's order."""
    for pid in ("SM-1", "SM-2", "SM-3"):
        assert await _webhook(engine, journal, pid) is not None
    assert await _webhook(engine, journal, "SM-2") is None  # a repeat within the journal
    sessions = session_factory(engine)
    moving = await journal.take()
    async with transaction(sessions) as session:
        await journal.move(session, moving)
    # ... the process dies here: no forget()
    assert [r.provider_id for r in await _main_rows(engine)] == ["SM-1", "SM-2", "SM-3"]
    assert await journal.waiting() == 3
    assert await _webhook(engine, journal, "SM-4") is not None

    recorder = Recorder()
    worker = InboxWorker(sessions, recorder, journal=journal)
    await _drain(worker)
    assert await _webhook(engine, journal, "SM-1") is not None  # Twilio retrying, late
    await _drain(worker)
    assert recorder.seen == [f"text of SM-{n}" for n in (1, 2, 3, 4)]
    assert await journal.waiting() == 0
    rows = await _main_rows(engine)
    assert [r.provider_id for r in rows] == ["SM-1", "SM-2", "SM-3", "SM-4"]
    assert all(r.processed_at is not None and r.attempts == 1 for r in rows)


async def test_a_failed_move_keeps_the_journal(engine: AsyncEngine, journal: Journal) -> None:
    """The main database refuses the copy (here its table is missing): the pass fails,
    the message stays in the journal, and the next pass after the repair takes it."""
    await _webhook(engine, journal, "SM-kept")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE inbound_message RENAME TO inbound_away")
    recorder = Recorder()
    worker = InboxWorker(session_factory(engine), recorder, journal=journal)
    with pytest.raises(Exception, match="inbound_message"):
        await worker.run_once()
    assert await journal.waiting() == 1
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE inbound_away RENAME TO inbound_message")
    await _drain(worker)
    assert recorder.seen == ["text of SM-kept"]
    assert await journal.waiting() == 0


def _ring(*keys: bytes) -> crypto.Keyring:
    return crypto.Keyring(list(keys), index_key=base64.b64decode(TEST_INDEX_KEY))


async def test_rotate_key_reseals_what_waits_in_the_journal(
    engine: AsyncEngine, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message stored before a key rotation and moved in after the old key is gone
    still opens."""
    monkeypatch.setattr(crypto, "_keyring", crypto.keyring())
    old = base64.b64decode(TEST_DATA_KEY)
    new = b"rightsdesk-journal-rotation-32by"
    crypto.configure(_ring(old))
    await _webhook(engine, journal, "SM-old")
    crypto.configure(_ring(new, old))
    report = await rotation.rotate(engine, journal=journal.engine)
    assert report.resealed["inbound_journal.payload"] == 1 and report.failures == 0
    crypto.configure(_ring(new))
    seen: list[Any] = []

    async def handler(session: AsyncSession, message: InboundMessage) -> None:
        seen.append(message.payload)

    await _drain(InboxWorker(session_factory(engine), handler, journal=journal))
    assert seen == [{"MessageSid": "SM-old", "Body": "text of SM-old"}]
