"""SQLite's one writer per process, in turns: webhooks' writes go before the workers'
waiting transactions, each queue keeps its order, and a cancelled waiter loses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage.db import WriteTurns, create_engine, migrate, session_factory, transaction
from storage.inbound import store_now
from storage.models import utcnow


async def _take(turns: WriteTurns, name: str, order: list[str], *, urgent: bool) -> None:
    await turns.acquire(urgent=urgent)
    order.append(name)
    await asyncio.sleep(0)
    turns.release()


async def test_urgent_writers_go_before_the_others_and_each_queue_keeps_its_order() -> None:
    turns = WriteTurns()
    await turns.acquire()  # a write under way
    order: list[str] = []
    tasks = [
        asyncio.create_task(_take(turns, name, order, urgent=name.startswith("webhook")))
        for name in ("worker 1", "worker 2", "webhook 1", "worker 3", "webhook 2")
    ]
    await asyncio.sleep(0)
    assert turns.waiting == 5
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["webhook 1", "webhook 2", "worker 1", "worker 2", "worker 3"]
    await asyncio.wait_for(turns.acquire(), 1)  # free again: taken at once


async def test_a_cancelled_waiter_neither_keeps_nor_loses_the_turn() -> None:
    turns = WriteTurns()
    await turns.acquire()
    gone = asyncio.create_task(turns.acquire(urgent=True))
    order: list[str] = []
    after = asyncio.create_task(_take(turns, "worker", order, urgent=False))
    await asyncio.sleep(0)
    gone.cancel()
    turns.release()  # skips the cancelled webhook
    await asyncio.wait_for(after, 1)
    assert order == ["worker"]

    # Granted just as it is cancelled: the turn passes on instead of being lost.
    await turns.acquire()
    granted = asyncio.create_task(turns.acquire())
    await asyncio.sleep(0)
    turns.release()
    granted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted
    await asyncio.wait_for(turns.acquire(), 1)


async def test_a_webhook_is_stored_before_the_workers_queued_transactions(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    await migrate(engine)
    sessions = session_factory(engine)
    order: list[str] = []
    release = asyncio.Event()

    async def worker(name: str) -> None:
        async with transaction(sessions):
            order.append(name)
            if name == "worker 1":
                await release.wait()  # holds SQLite's write lock meanwhile

    async def webhook() -> None:
        row = await store_now(
            engine, channel="whatsapp", provider_id="SM1", kind="message",
            sender="whatsapp:+923001234567", tenant=None, payload={}, now=utcnow(),
        )  # fmt: skip
        assert row is not None
        order.append("webhook")

    try:
        first = asyncio.create_task(worker("worker 1"))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(worker(f"worker {n}")) for n in (2, 3)]
        await asyncio.sleep(0.05)
        stored = asyncio.create_task(webhook())
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *queued, stored), 10)
    finally:
        await engine.dispose()
    assert order == ["worker 1", "webhook", "worker 2", "worker 3"]
