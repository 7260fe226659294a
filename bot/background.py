"""The web process's background work on a thread of its own, with its own event loop.

One event loop running both the webhook handlers and the workers makes every await of a
handler wait behind the worker steps ready at that moment; with a backlog, that is most of
the time (webhook p99 at 200/s: 44–113 ms on PostgreSQL, `bench/README.md`). On a thread of
their own the workers still share the interpreter, but CPython hands its lock to a waiting
thread after `SWITCH_INTERVAL`, so a webhook waits for at most that much, not for a queue;
and the thread runs `NICE`r than the web loop, so that on a machine whose cores are all
busy (the workers' backlog, PostgreSQL) the kernel runs the webhooks first. Measured on
2 cores at 200 webhooks/s (`bench/README.md`, session 5): p99 87 ms on the thread alone,
40 ms with both; one shared loop, 69–113 ms. A collection by the cyclic garbage collector
still stops both threads (the remaining tail).

The workers' thread has its own connection pool: asyncpg connections belong to the loop
that opened them. On SQLite the workers stay on the web loop (`bot/app.py`), since the
file has one writer and the web process's writers queue on an `asyncio.Lock` of one loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from bot.deps import Deps
from storage.db import create_engine, session_factory

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0002  # seconds; CPython's default is 0.005 (bench: p50 19 -> 11 ms)
NICE = 10  # the workers' thread gives way to the webhooks' on a busy machine (p99 93 -> 40 ms)
Work = Callable[[Deps], AbstractAsyncContextManager[None]]


class WorkerThread:
    """`async with WorkerThread(deps, work):` runs `work` on a new thread and loop until the
    block ends. `work` gets a copy of `deps` with the thread's own engine; the web side's
    `deps.wake_inbox()` reaches the thread's inbox worker."""

    def __init__(self, deps: Deps, work: Work, *, name: str = "rightsdesk-work") -> None:
        self.deps = deps
        self.work = work
        self.name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._mine: Deps | None = None
        self._switch_interval = sys.getswitchinterval()

    async def __aenter__(self) -> WorkerThread:
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._started.wait)
        if self._failure is not None:
            await asyncio.to_thread(self._thread.join)
            raise self._failure
        self.deps.wakers.append(self._wake)
        sys.setswitchinterval(SWITCH_INTERVAL)
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.deps.wakers.remove(self._wake)
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        sys.setswitchinterval(self._switch_interval)

    def _wake(self) -> None:
        """The web side stored a message: wake the inbox worker, on its own loop."""
        if self._loop is not None and self._mine is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._mine.wake_inbox)

    def _main(self) -> None:
        _lower_priority(NICE)
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to __aenter__ when start-up failed
            if not self._started.is_set():
                self._failure = exc
            else:
                log.exception("%s stopped with an error", self.name)
        finally:
            self._started.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        engine = create_engine(self.deps.settings.database_url)
        mine = dataclasses.replace(
            self.deps, engine=engine, sessions=session_factory(engine), wakers=[]
        )
        try:
            async with self.work(mine):
                self._mine = mine
                self._started.set()
                await self._stop.wait()
        finally:
            await engine.dispose()


def _lower_priority(nice: int) -> None:
    """Make the calling thread nicer. On Linux a thread has its own nice value (setpriority
    with its thread id); elsewhere, or where it is refused, the thread keeps the process's."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError):
        log.info("workers' thread runs at the process's priority")
