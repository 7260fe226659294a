"""`serve` freezes its heap again a few times after start (`bot.cli.settle_heap`): what the
first minutes of work built leaves the collector's walk, and nothing is left running."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from functools import partial

import pytest
from aiohttp import web

from bot.cli import settle_heap


@pytest.fixture
def thawed() -> Iterator[None]:
    """The test process never freezes: whatever a test froze goes back afterwards."""
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


async def _run(after: tuple[float, ...], seconds: float) -> None:
    app = web.Application()
    app.cleanup_ctx.append(partial(settle_heap, after=after))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await asyncio.sleep(seconds)
    finally:
        async with asyncio.timeout(5):
            await runner.cleanup()


@pytest.mark.usefixtures("thawed")
async def test_what_the_app_built_while_running_is_frozen_at_each_time() -> None:
    await _run((0.05, 0.1), 0.01)
    assert gc.get_freeze_count() == 0  # stopped before its first time: nothing frozen
    built = [[n] for n in range(5000)]  # what the first requests would build and keep
    await _run((0.05, 0.1), 0.3)
    assert gc.get_freeze_count() >= len(built)
    walked = {id(item) for item in gc.get_objects()}
    assert not any(id(item) in walked for item in built)
