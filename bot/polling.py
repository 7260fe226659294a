"""The loop the inbox and outbox workers share: work while there is work, else wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

ERROR_PAUSE = 2.0  # seconds after a failed pass (the database is down, say)


async def keep_polling(
    name: str, run_once: Callable[[], Awaitable[int]], wake: asyncio.Event, idle_wait: float
) -> None:
    """Call `run_once` until cancelled: again at once while it finds work, otherwise when
    `wake` is set or after `idle_wait` seconds. A failed pass is logged and the loop pauses
    instead of ending."""
    while True:
        try:
            busy = await run_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s pass failed; retrying shortly", name)
            busy = 0
            await asyncio.sleep(ERROR_PAUSE)
        if busy:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=idle_wait)
        wake.clear()
