"""The workers' own thread: its own loop and engine, woken from the web loop, nicer."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from bot.background import NICE, SWITCH_INTERVAL, WorkerThread
from bot.deps import Deps
from bot.mail import EmailSender
from bot.metrics import Metrics
from bot.settings import Settings
from bot.tenants import Tenants
from storage.db import create_engine, session_factory


def _deps(database_url: str) -> Deps:
    settings = Settings(database_url=database_url)
    engine = create_engine(database_url)
    return Deps(
        settings=settings,
        tenants=Tenants([]),
        engine=engine,
        sessions=session_factory(engine),
        metrics=Metrics(),
        mail=EmailSender(None, b"k" * 32),  # type: ignore[arg-type]
    )


async def test_work_runs_on_its_own_thread_loop_and_engine_and_is_woken(
    database_url: str,
) -> None:
    deps = _deps(database_url)
    seen: dict[str, object] = {}
    woken = threading.Event()

    @asynccontextmanager
    async def work(mine: Deps) -> AsyncIterator[None]:
        seen["thread"] = threading.get_ident()
        seen["loop"] = asyncio.get_running_loop()
        seen["engine"] = mine.engine
        tid = threading.get_native_id()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, tid)
        async with mine.engine.connect():  # the thread's own pool answers on its loop
            pass
        mine.wakers.append(woken.set)
        yield
        seen["stopped"] = True

    before = sys.getswitchinterval()
    web_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    async with WorkerThread(deps, work):
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        deps.wake_inbox()  # what a webhook handler does after storing a message
        assert await asyncio.to_thread(woken.wait, 5.0)
    await deps.engine.dispose()
    assert seen["thread"] != threading.get_ident()
    assert seen["loop"] is not asyncio.get_running_loop()
    assert seen["engine"] is not deps.engine
    assert seen["nice"] == web_nice + NICE
    assert seen["stopped"] is True
    assert sys.getswitchinterval() == pytest.approx(before)
    assert deps.wakers == []


async def test_a_failed_start_is_raised_to_the_web_side(database_url: str) -> None:
    deps = _deps(database_url)

    @asynccontextmanager
    async def work(_mine: Deps) -> AsyncIterator[None]:
        raise RuntimeError("the workers could not start")
        yield  # pragma: no cover

    with pytest.raises(RuntimeError, match="could not start"):
        async with WorkerThread(deps, work):
            pass  # pragma: no cover
    await deps.engine.dispose()
    assert deps.wakers == []
