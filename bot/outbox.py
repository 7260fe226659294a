"""The outbox worker: delivers queued messages through each channel's sender, exactly once
per message while processes live, retrying what the provider could not take yet."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.polling import Poller
from storage import outbox
from storage.db import SessionFactory, transaction
from storage.models import OutboundMessage, utcnow

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)  # twice the senders' 15 s timeouts: a sender still at it is dead
MAX_ATTEMPTS = 25  # ~ a day of backoff at the cap below
BACKOFF_CAP = 3600.0


class SendError(Exception):
    """A provider refused a message; `retryable` says whether trying later can help."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.retryable = retryable
        self.retry_after = retry_after


class Sender(Protocol):
    """Delivers one outbox payload on one channel and returns the provider's message id."""

    async def send(self, recipient: str, payload: Mapping[str, Any]) -> str | None: ...


class Reconciler(Protocol):
    """A sender that can tell whether the provider already took a message (after a crash)."""

    async def find_sent(
        self, recipient: str, payload: Mapping[str, Any], since: datetime
    ) -> str | None: ...


class Observer(Protocol):
    def __call__(self, channel: str, result: str) -> None: ...


class AfterSend(Protocol):
    """Acts, in the transaction that records the outcome, on a message whose payload has a
    "hook" (the staff desk keeps a card's message id); `error` is set when it failed for good."""

    async def __call__(
        self,
        session: AsyncSession,
        message: OutboundMessage,
        provider_id: str | None,
        error: str | None,
    ) -> None: ...


@runtime_checkable
class ReconcilingSender(Sender, Reconciler, Protocol):
    """A sender that can also reconcile."""


def backoff(attempts: int) -> float:
    """Seconds before the next try: exponential from 2 s with jitter, capped at an hour."""
    base: float = min(BACKOFF_CAP, 2.0 ** min(attempts, 12))
    return base * random.uniform(0.8, 1.2)


@dataclass
class OutboxWorker:
    """Claims due messages, sends them concurrently (one at a time per recipient)."""

    sessions: SessionFactory
    senders: Mapping[str, Sender]
    observe: Observer | None = None
    now: Callable[[], datetime] = utcnow
    batch: int = 16  # sends at once: 50 put the PostgreSQL webhook p99 at 65–70 ms (bench)
    idle_wait: float = 1.0
    lease: timedelta = LEASE
    after_send: AfterSend | None = None
    # Awaited before each send: the web process lets webhooks in flight go first
    # (bot.priority).
    pause: Callable[[], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        self.name = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.poller = Poller("outbox", self.run_once, self.idle_wait)

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        self.poller.wake()

    async def run_once(self) -> int:
        """Claim and deliver one batch; how many messages were claimed."""
        async with transaction(self.sessions) as session:
            claimed = await outbox.claim(
                session, worker=self.name, now=self.now(), lease=self.lease, limit=self.batch
            )
        if claimed:
            await asyncio.gather(*(self._deliver(c.message, c.in_doubt_since) for c in claimed))
        return len(claimed)

    async def run(self) -> None:
        """Deliver until stopped; database errors pause the loop instead of ending it."""
        await self.poller.run()

    async def _deliver(self, message: OutboundMessage, in_doubt_since: datetime | None) -> None:
        assert message.id is not None
        if self.pause is not None:
            await self.pause()
        sender = self.senders.get(message.channel)
        if sender is None:
            await self._retry_later(message, "channel not configured", delay=60.0)
            return
        started = self.now()
        try:
            # Give up well inside the lease: past it, another worker may claim the message.
            async with asyncio.timeout(self.lease.total_seconds() * 0.8):
                provider_id = await self._already_sent(sender, message, in_doubt_since)
                if provider_id is None:
                    provider_id = await sender.send(message.recipient, message.payload)
        except TimeoutError:
            log.warning(
                "outbox message %s on %s: provider did not answer", message.id, message.channel
            )
            # The provider may have taken it: the next attempt asks before sending again.
            # (A message already in doubt keeps its earlier moment: `outbox.mark_retry`.)
            await self._retry_later(
                message, outbox.in_doubt(started), delay=backoff(message.attempts)
            )
            return
        except SendError as exc:
            if exc.retryable and message.attempts < MAX_ATTEMPTS:
                delay = (
                    exc.retry_after if exc.retry_after is not None else backoff(message.attempts)
                )
                await self._retry_later(message, str(exc), delay=delay)
            else:
                await self._fail(message, str(exc))
            return
        except Exception as exc:  # a bug in a sender must not leave the row claimed
            log.exception("outbox message %s: unexpected sender error", message.id)
            await self._retry_later(message, type(exc).__name__, delay=backoff(message.attempts))
            return
        await self._record_sent(message, provider_id)
        log.info("outbox message %s sent on %s", message.id, message.channel)
        self._count(message.channel, "sent")

    async def _record_sent(self, message: OutboundMessage, provider_id: str | None) -> None:
        """Commit "sent". The provider has the message now: if the database cannot be
        reached, keep trying (it is the only record that stops a second send) rather than
        leaving the row to be claimed again when its lease runs out."""
        assert message.id is not None
        if self.pause is not None:
            await self.pause()
        wait = 0.5
        while True:
            try:
                async with transaction(self.sessions) as session:
                    marked = await outbox.mark_sent(
                        session,
                        message.id,
                        worker=self.name,
                        provider_id=provider_id,
                        now=self.now(),
                    )
                    if marked:
                        await self._hook(session, message, provider_id, None)
                return
            except (SQLAlchemyError, OSError) as exc:
                log.warning(
                    "outbox message %s sent but not recorded yet (%s); trying again in %.1fs",
                    message.id,
                    type(exc).__name__,
                    wait,
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)

    async def _already_sent(
        self, sender: Sender, message: OutboundMessage, since: datetime | None
    ) -> str | None:
        """After a crash mid-send, ask the provider (where it can say) before sending again."""
        if since is None or not isinstance(sender, ReconcilingSender):
            return None
        found = await sender.find_sent(message.recipient, message.payload, since)
        if found is not None:
            log.warning("outbox message %s had reached the provider before a crash", message.id)
        return found

    async def _retry_later(self, message: OutboundMessage, reason: str, *, delay: float) -> None:
        assert message.id is not None
        at = self.now() + timedelta(seconds=delay)
        async with transaction(self.sessions) as session:
            await outbox.mark_retry(session, message.id, worker=self.name, at=at, error=reason)
        log.warning(
            "outbox message %s on %s: retry in %.1fs (%s)",
            message.id,
            message.channel,
            delay,
            reason,
        )
        self._count(message.channel, "retry")

    async def _fail(self, message: OutboundMessage, reason: str) -> None:
        assert message.id is not None
        async with transaction(self.sessions) as session:
            marked = await outbox.mark_failed(session, message.id, worker=self.name, error=reason)
            if marked:
                await self._hook(session, message, None, reason)
        log.error("outbox message %s on %s failed: %s", message.id, message.channel, reason)
        self._count(message.channel, "failed")

    async def _hook(
        self,
        session: AsyncSession,
        message: OutboundMessage,
        provider_id: str | None,
        error: str | None,
    ) -> None:
        """Run the after-send hook in a savepoint: a failing hook is logged and must not
        undo the record of a message that did go out (it would be sent again)."""
        if self.after_send is None or not message.payload.get("hook"):
            return
        try:
            async with session.begin_nested():
                await self.after_send(session, message, provider_id, error)
        except Exception:
            log.exception("outbox message %s: after-send hook failed", message.id)

    def _count(self, channel: str, result: str) -> None:
        if self.observe is not None:
            self.observe(channel, result)
