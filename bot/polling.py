"""The loop the inbox, outbox and webhook workers share: work while there is work, else wait;
on shutdown, finish the pass under way rather than be cancelled in the middle of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)

ERROR_PAUSE = 2.0  # seconds after a failed pass (the database is down, say)
STOP_GRACE = 10.0  # seconds a pass under way may take to finish on shutdown


class Poller:
    """Calls `run_once` until stopped: again at once while it finds work, otherwise when
    woken or after `idle_wait` seconds. A failed pass is logged and the loop pauses
    instead of ending."""

    def __init__(self, name: str, run_once: Callable[[], Awaitable[int]], idle_wait: float) -> None:
        self.name = name
        self.run_once = run_once
        self.idle_wait = idle_wait
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """End the loop after the pass under way (if any)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                busy = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s pass failed; retrying shortly", self.name)
                busy = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped(), timeout=ERROR_PAUSE)
            if busy or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.idle_wait)
            self._wake.clear()

    async def _stopped(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()


async def stop_all(pollers: Iterable[Poller], tasks: list[asyncio.Task[None]]) -> None:
    """Stop the loops, give the passes under way `STOP_GRACE` seconds, then cancel.

    Cancelling a pass in the middle of a query leaves SQLAlchemy to throw its connection
    away, and aiosqlite's close of a connection being thrown away can wait forever for a
    thread that has already gone; a pass allowed to finish returns its connection whole."""
    for poller in pollers:
        poller.stop()
    _, late = await asyncio.wait(tasks, timeout=STOP_GRACE) if tasks else (set(), set())
    for task in late:
        log.warning("%s did not stop in %.0fs; cancelling it", task.get_name(), STOP_GRACE)
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
