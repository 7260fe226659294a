"""The inbox worker: with several messages of a batch processed at once (PostgreSQL), every
message is processed once and each sender's messages stay in the order they came."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.inbox import InboxWorker
from storage import inbound
from storage.crypto import blind_index
from storage.db import SessionFactory, transaction
from storage.models import InboundMessage, utcnow


async def _store(sessions: SessionFactory, senders: int, each: int) -> None:
    async with transaction(sessions) as session:
        for n in range(each):
            for s in range(senders):
                await inbound.store(
                    session,
                    channel="whatsapp",
                    provider_id=f"SM{s:04d}{n:04d}",
                    kind="message",
                    sender=f"whatsapp:+92300{s:07d}",
                    tenant="optician-dynamics",
                    payload={"n": n},
                    now=utcnow(),
                )


async def _drain(worker: InboxWorker) -> None:
    while await worker.run_once():
        pass


async def test_concurrent_batches_keep_each_senders_order(postgres_url: str) -> None:
    from storage.db import create_engine, session_factory

    engine = create_engine(postgres_url)
    sessions = session_factory(engine)
    try:
        await _store(sessions, senders=12, each=4)
        seen: dict[str, list[int]] = defaultdict(list)
        running = 0
        most = 0

        async def handler(session: AsyncSession, message: InboundMessage) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.02)  # a round trip's worth: the others run meanwhile
            seen[message.sender_index].append(message.payload["n"])
            running -= 1

        worker = InboxWorker(sessions, handler, concurrency=8)
        await _drain(worker)
        assert most > 1  # they did overlap
        assert len(seen) == 12 and all(order == [0, 1, 2, 3] for order in seen.values())
        async with sessions() as session:
            rows = list(await session.exec(select(InboundMessage)))
        assert len(rows) == 48 and all(r.processed_at is not None and r.attempts == 1 for r in rows)
    finally:
        await engine.dispose()


async def test_one_at_a_time_by_default(sessions: SessionFactory) -> None:
    await _store(sessions, senders=5, each=2)
    running = 0
    most = 0

    async def handler(session: AsyncSession, message: InboundMessage) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.005)
        running -= 1

    await _drain(InboxWorker(sessions, handler))
    assert most == 1


async def test_a_webhooks_one_statement_stores_what_a_session_would(
    engine: AsyncEngine, sessions: SessionFactory
) -> None:
    """`store_now` (the webhooks' path) and `store` (a session's) write the same row: the
    payload sealed and opened again, UTC times, and a repeat of a provider id refused."""
    now = utcnow()
    fields = {
        "channel": "whatsapp",
        "kind": "message",
        "sender": "whatsapp:+923001234567",
        "tenant": "optician-dynamics",
        "payload": {"Body": "حذف کریں", "NumMedia": ["0"]},
        "now": now,
    }
    fast = await inbound.store_now(engine, provider_id="SM-fast", **fields)  # type: ignore[arg-type]
    assert fast is not None
    assert await inbound.store_now(engine, provider_id="SM-fast", **fields) is None  # type: ignore[arg-type]
    async with transaction(sessions) as session:
        slow = await inbound.store(session, provider_id="SM-slow", **fields)  # type: ignore[arg-type]
    async with sessions() as session:
        rows = {
            row.provider_id: row
            for row in await session.exec(select(InboundMessage).order_by(InboundMessage.id))  # type: ignore[arg-type]
        }
        sealed = {
            pid: text
            for pid, text in (
                await session.exec(sa.text("SELECT provider_id, payload FROM inbound_message"))  # type: ignore[call-overload]
            )
        }
    assert set(rows) == {"SM-fast", "SM-slow"} and rows["SM-fast"].id == fast != slow
    for pid in rows:
        assert rows[pid].payload == fields["payload"]
        assert "حذف" not in sealed[pid]  # sealed at rest, on both paths
        assert rows[pid].received_at == now == rows[pid].next_attempt_at
        assert rows[pid].attempts == 0 and rows[pid].processed_at is None
    assert (
        rows["SM-fast"].sender_index
        == rows["SM-slow"].sender_index
        == blind_index("whatsapp:+923001234567")
    )


async def test_a_driver_error_on_the_webhook_path_is_an_operational_error(
    engine: AsyncEngine,
) -> None:
    """The handlers answer 503 to SQLAlchemy's errors: a failure of the driver itself (here
    a table that is not there) must come out as one, not as the driver's own exception."""
    async with engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE inbound_message RENAME TO inbound_gone"))
    with pytest.raises(sa.exc.OperationalError):
        await inbound.store_now(
            engine,
            channel="whatsapp",
            provider_id="SM1",
            kind="message",
            sender="whatsapp:+923001234567",
            tenant=None,
            payload={},
            now=utcnow(),
        )


async def test_webhooks_arriving_together_are_each_stored_once(
    engine: AsyncEngine, sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sixty webhooks at once, ten of them sent twice (Twilio retrying): every message is
    stored once, exactly one of each pair is told so, and they share statements (group
    commit) instead of queueing for the write lock or a connection one by one."""
    statements: list[int] = []
    real = inbound._insert_sql

    def counted(dialect: Any, **kwargs: Any) -> str:
        statements.append(kwargs["rows"])
        return real(dialect, **kwargs)

    monkeypatch.setattr(inbound, "_insert_sql", counted)
    ids = [f"SM{n:03d}" for n in range(50)] + [f"SM{n:03d}" for n in range(0, 50, 5)]

    async def one(provider_id: str) -> tuple[str, int | None]:
        row_id = await inbound.store_now(
            engine,
            channel="whatsapp",
            provider_id=provider_id,
            kind="message",
            sender="whatsapp:+923001234567",
            tenant="optician-dynamics",
            payload={"MessageSid": provider_id},
            now=utcnow(),
        )
        return provider_id, row_id

    results = await asyncio.gather(*(one(pid) for pid in ids))
    told: dict[str, list[int | None]] = defaultdict(list)
    for provider_id, row_id in results:
        told[provider_id].append(row_id)
    async with sessions() as session:
        stored = {m.provider_id: m for m in await session.exec(select(InboundMessage))}
    assert set(stored) == set(ids)
    for provider_id, answers in told.items():
        assert [a for a in answers if a is not None] == [stored[provider_id].id], provider_id
        assert stored[provider_id].payload == {"MessageSid": provider_id}
    assert sum(statements) == len(ids)
    assert len(statements) < len(ids) / 2, statements
