"""Requests first: the web process's background work gives way to requests in flight.

One event loop runs the request handlers and the workers that process what they store.
A handler makes a few awaits (read the body, query, store, commit), and after each one it
waits behind every worker step that became ready meanwhile, so under load its latency grows
with the workers' concurrency. Twilio gives a webhook 15 seconds, and an admin waits for
the ticket list; a customer's answer can wait a little longer. So before each unit of
background work (a message to process, a message to send, a send to record) a worker calls
`Foreground.pause()`, which returns at once when no request is in flight and otherwise
waits until none is — at most `MAX_PAUSE`, so that under an unbroken stream of requests the
workers still move.

The requests counted are the webhooks, the admin pages and the API (`FOREGROUND`); static
files and the health check are not. Counting the admin pages and the API, and pausing
before recording a send as well as before it, took the API's first page from 28–32 to
20–22 ms p95 while the outbox delivered WhatsApp messages on SQLite (`bench.outbox`,
bench/README.md, session 15).

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
FOREGROUND = ("/webhooks/", "/api/", "/admin")  # the paths whose requests workers wait for
POLL = 0.002  # seconds, between looks from another thread's loop

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Foreground:
    """Counts the requests in flight; `pause()` waits for a moment without any."""

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
        """Let the requests in flight go first (for up to `max_pause` seconds)."""
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
        self, prefixes: tuple[str, ...] = FOREGROUND
    ) -> Callable[..., Awaitable[web.StreamResponse]]:
        """An aiohttp middleware that counts the requests under `prefixes`."""

        @web.middleware
        async def counted(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith(prefixes):
                return await handler(request)
            with self.request():
                return await handler(request)

        return counted
