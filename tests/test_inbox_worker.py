"""The inbox worker: with several messages of a batch processed at once (PostgreSQL), every
message is processed once and each sender's messages stay in the order they came."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.inbox import InboxWorker
from storage import inbound
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
            seen[message.sender].append(message.payload["n"])
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
