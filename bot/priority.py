"""Webhooks first: the web process's background work gives way to webhooks in flight.

One event loop runs the webhook handlers and the workers that process what they store.
A handler makes a few awaits (read the body, store, commit), and after each one it waits
behind every worker step that became ready meanwhile, so under load its latency grows with
the workers' concurrency. Twilio gives a webhook 15 seconds; a customer's answer can wait a
little longer. So before each unit of background work (a message to process, a message to
send) a worker calls `Foreground.pause()`, which returns at once when no webhook is in
flight and otherwise waits until none is — at most `MAX_PAUSE`, so that under an unbroken
stream of webhooks the workers still move.

On PostgreSQL the workers run on a thread and loop of their own (`bot/background.py`);
their `pause()` then looks at the count every `POLL` seconds instead of awaiting the web
loop's event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

MAX_PAUSE = 0.05  # seconds
POLL = 0.002  # seconds, between looks from another thread's loop

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Foreground:
    """Counts the webhooks in flight; `pause()` waits for a moment without any."""

    def __init__(self, max_pause: float = MAX_PAUSE) -> None:
        self.max_pause = max_pause
        self._in_flight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the web loop, once counting

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._in_flight += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._quiet.set()

    async def pause(self) -> None:
        """Let the webhooks in flight go first (for up to `max_pause` seconds)."""
        if not self._in_flight:
            return
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.max_pause):
                    await self._quiet.wait()
            return
        end = loop.time() + self.max_pause
        while self._in_flight and loop.time() < end:  # noqa: ASYNC110 (the event is the web loop's)
            await asyncio.sleep(POLL)

    def middleware(
        self, prefix: str = "/webhooks/"
    ) -> Callable[..., Awaitable[web.StreamResponse]]:
        """An aiohttp middleware that counts the requests under `prefix`."""

        @web.middleware
        async def counted(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith(prefix):
                return await handler(request)
            with self.request():
                return await handler(request)

        return counted
