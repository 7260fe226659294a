"""The outbox table's claim rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from storage import outbox
from storage.db import SessionFactory, transaction
from storage.enums import OutboxStatus
from storage.models import OutboundMessage, utcnow

LEASE = timedelta(seconds=30)


async def _queue(sessions: SessionFactory, *recipients: str) -> list[int]:
    async with transaction(sessions) as session:
        rows = [
            outbox.enqueue(session, channel="telegram", recipient=r, payload={"text": f"m{i}"})
            for i, r in enumerate(recipients)
        ]
        await session.flush()
    return [row.id for row in rows if row.id is not None]


async def _claim(sessions: SessionFactory, worker: str, now=None, limit: int = 10):
    async with transaction(sessions) as session:
        claimed = await outbox.claim(
            session, worker=worker, now=now or utcnow(), lease=LEASE, limit=limit
        )
    return [c.message for c in claimed]


async def test_claims_one_message_per_recipient_in_order(sessions: SessionFactory) -> None:
    a1, b1, a2, b2, a3 = await _queue(sessions, "1", "2", "1", "2", "1")
    first = await _claim(sessions, "w1")
    assert [m.id for m in first] == [a1, b1]
    assert all(m.status == OutboxStatus.SENDING and m.attempts == 1 for m in first)
    # Nothing more for these recipients while their first message is in flight.
    assert await _claim(sessions, "w2") == []
    async with transaction(sessions) as session:
        assert await outbox.mark_sent(session, a1, worker="w1", provider_id="p1", now=utcnow())
    assert [m.id for m in await _claim(sessions, "w2")] == [a2]
    async with transaction(sessions) as session:
        assert await outbox.mark_failed(session, b1, worker="w1", error="refused")
    # A failed message no longer holds back the next one to the same recipient.
    assert [m.id for m in await _claim(sessions, "w2")] == [b2]
    assert a3 not in [m.id for m in await _claim(sessions, "w3")]


async def test_retry_waits_until_its_time(sessions: SessionFactory) -> None:
    (only,) = await _queue(sessions, "9")
    now = utcnow()
    await _claim(sessions, "w1", now=now)
    async with transaction(sessions) as session:
        await outbox.mark_retry(
            session, only, worker="w1", at=now + timedelta(seconds=10), error="503"
        )
    assert await _claim(sessions, "w1", now=now + timedelta(seconds=5)) == []
    again = await _claim(sessions, "w1", now=now + timedelta(seconds=11))
    assert [m.id for m in again] == [only]
    assert again[0].attempts == 2 and again[0].last_error == "503"


async def test_expired_lease_is_reclaimed_in_doubt_and_stale_worker_cannot_finish(
    sessions: SessionFactory,
) -> None:
    (only,) = await _queue(sessions, "5")
    now = utcnow()
    await _claim(sessions, "dead", now=now)
    async with transaction(sessions) as session:
        late = now + LEASE + timedelta(seconds=1)
        again = await outbox.claim(session, worker="probe", now=late, lease=LEASE, limit=5)
        # The dead attempt started at `now`: the provider may have the message since then.
        assert [c.message.id for c in again] == [only]
        assert again[0].in_doubt_since is not None
        assert again[0].in_doubt_since <= now
        assert now - again[0].in_doubt_since < timedelta(seconds=10)
        await session.rollback()
    assert await _claim(sessions, "alive", now=now + LEASE - timedelta(seconds=1)) == []
    taken = await _claim(sessions, "alive", now=now + LEASE + timedelta(seconds=1))
    assert [m.id for m in taken] == [only]
    async with transaction(sessions) as session:
        assert not await outbox.mark_sent(
            session, only, worker="dead", provider_id="x", now=utcnow()
        )
        assert await outbox.mark_sent(session, only, worker="alive", provider_id="y", now=utcnow())
    async with sessions() as session:
        row = await session.get(OutboundMessage, only)
        assert row is not None and row.provider_id == "y" and row.status == OutboxStatus.SENT


async def test_concurrent_claimers_never_share_a_message(sessions: SessionFactory) -> None:
    ids = await _queue(sessions, *[str(n) for n in range(60)])
    results = await asyncio.gather(*(_claim(sessions, f"w{n}", limit=7) for n in range(6)))
    claimed = [m.id for batch in results for m in batch]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= set(ids)
    assert len(claimed) == 42


async def test_depth_counts_pending_and_in_flight(sessions: SessionFactory) -> None:
    await _queue(sessions, "1", "1", "2")
    await _claim(sessions, "w")
    async with sessions() as session:
        assert await outbox.depth(session) == 3


async def test_a_second_attempt_that_dies_keeps_the_first_attempts_doubt(
    sessions: SessionFactory,
) -> None:
    """The first attempt reached the provider and died; the one that found it there died
    before recording it. The third must still ask the provider from the first attempt on,
    or it sends the message again (seen in the kill -9 test)."""
    (only,) = await _queue(sessions, "7")
    first = utcnow()
    await _claim(sessions, "dies after sending", now=first)
    second = first + LEASE + timedelta(seconds=1)
    await _claim(sessions, "dies after asking", now=second)
    third = second + LEASE + timedelta(seconds=1)
    async with transaction(sessions) as session:
        again = await outbox.claim(session, worker="lives", now=third, lease=LEASE, limit=5)
    assert [c.message.id for c in again] == [only]
    since = again[0].in_doubt_since
    assert since is not None and since <= first
    assert first - since < timedelta(seconds=10)
    assert again[0].message.attempts == 3
