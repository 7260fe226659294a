"""What both loopback fakes share: an aiohttp server on a free port and fault injection."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiohttp import web


@dataclass(frozen=True)
class Fault:
    """An injected failure: the HTTP status to answer and, for 429, the seconds to wait."""

    status: int
    retry_after: int | None = None


class LoopbackServer:
    """An aiohttp application on 127.0.0.1 and a random port, started as an async context."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._faults: deque[Fault] = deque()
        self._outage: tuple[Fault, float] | None = None

    def add_routes(self, app: web.Application) -> None:
        """Register the fake's routes."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Root URL of the running server, without a trailing slash."""
        if self._url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._url

    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=1, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self._url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._url = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def fail_next(self, n: int = 1, status: int = 500, *, retry_after: int | None = None) -> None:
        """Answer the next `n` requests with `status` (429 carries `retry_after`, default 1)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        self._faults.extend([Fault(status, retry_after)] * n)

    def set_outage(
        self, status: int = 503, seconds: float | None = None, *, retry_after: int | None = None
    ) -> None:
        """Answer every request with `status` for `seconds`, or until `clear_outage()`."""
        if status == 429 and retry_after is None:
            retry_after = 1
        until = math.inf if seconds is None else time.monotonic() + seconds
        self._outage = (Fault(status, retry_after), until)

    def clear_outage(self) -> None:
        self._outage = None

    def take_fault(self) -> Fault | None:
        """The failure the current request must get, if any."""
        if self._outage is not None:
            fault, until = self._outage
            if time.monotonic() < until:
                return fault
            self._outage = None
        return self._faults.popleft() if self._faults else None
