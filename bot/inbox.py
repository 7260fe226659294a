"""The inbox worker: processes stored inbound messages in order per sender, each exactly once.

Processing a message and everything it causes (state, tickets, outbox rows) commit in one
transaction together with marking the message processed, so a crash either keeps all of it
or none, and the message is simply processed again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.polling import Poller
from storage import inbound
from storage.db import SessionFactory, transaction
from storage.models import InboundMessage, utcnow

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=10)  # processing takes milliseconds; a worker still at it is dead


class Handler(Protocol):
    """Acts on one stored inbound message inside the caller's transaction."""

    async def __call__(self, session: AsyncSession, message: InboundMessage) -> None: ...


class RetryLater(Exception):
    """Expected: the message cannot be handled yet and is tried again after a while."""


def retry_delay(attempts: int) -> float:
    return min(600.0, 2.0 ** min(attempts, 10)) * random.uniform(0.8, 1.2)


@dataclass
class InboxWorker:
    sessions: SessionFactory
    handler: Handler
    now: Callable[[], datetime] = utcnow
    batch: int = 20
    idle_wait: float = 1.0
    lease: timedelta = LEASE
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # Messages of one batch processed at once (each in its own transaction). A batch holds
    # at most one message per sender, so each customer's order holds. 1 on SQLite, which
    # has one writer anyway; more on PostgreSQL, where the round trips then overlap.
    concurrency: int = 1
    # Awaited before each message: the web process lets webhooks in flight go first
    # (bot.priority).
    pause: Callable[[], Awaitable[None]] | None = None
    # On a SQLite file the webhooks store into a journal of their own: moved in per claim.
    journal: inbound.Journal | None = None

    def __post_init__(self) -> None:
        self.poller = Poller("inbox", self.run_once, self.idle_wait)

    def wake(self) -> None:
        self.poller.wake()

    async def run_once(self) -> int:
        """Process one batch of due messages; how many were claimed (or else moved in)."""
        moving = await self.journal.take() if self.journal is not None else []
        async with transaction(self.sessions) as session:
            if self.journal is not None:
                await self.journal.move(session, moving)
            claimed = await inbound.claim(
                session, now=self.now(), lease=self.lease, limit=self.batch
            )
        if self.journal is not None:
            await self.journal.forget(moving)
        if self.concurrency > 1 and len(claimed) > 1:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(message: InboundMessage) -> None:
                async with gate:
                    await self._process(message)

            await asyncio.gather(*(one(message) for message in claimed))
        else:
            for message in claimed:
                await self._process(message)
        if claimed:
            for hook in self.after_commit:
                hook()
        return len(claimed) or len(moving)

    async def _process(self, claimed: InboundMessage) -> None:
        assert claimed.id is not None
        if self.pause is not None:
            await self.pause()
        try:
            async with transaction(self.sessions) as session:
                message = await inbound.lock_for_processing(session, claimed.id)
                if message is None:
                    return
                await self.handler(session, message)
                await inbound.mark_processed(session, claimed.id, now=self.now())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = retry_delay(claimed.attempts)
            report = log.info if isinstance(exc, RetryLater) else log.exception
            report(
                "inbound %s (%s) failed on attempt %s; retry in %.0fs",
                claimed.id,
                claimed.channel,
                claimed.attempts,
                delay,
            )
            async with transaction(self.sessions) as session:
                await inbound.mark_retry(
                    session,
                    claimed.id,
                    at=self.now() + timedelta(seconds=delay),
                    error=type(exc).__name__,
                )
            return
        log.info("inbound %s (%s) processed", claimed.id, claimed.channel)

    async def run(self) -> None:
        """Process until stopped; database errors pause the loop instead of ending it."""
        await self.poller.run()
