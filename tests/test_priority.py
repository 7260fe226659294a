"""Requests first: workers wait while a request is in flight, but never for long."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.priority import Foreground


async def test_pause_is_free_when_no_webhook_is_in_flight() -> None:
    foreground = Foreground(max_pause=5.0)
    started = time.perf_counter()
    await foreground.pause()
    assert time.perf_counter() - started < 0.5


async def test_pause_waits_for_the_webhook_in_flight_to_end() -> None:
    foreground = Foreground(max_pause=5.0)
    order: list[str] = []

    async def webhook() -> None:
        with foreground.request():
            await asyncio.sleep(0.2)
            order.append("webhook answered")

    async def worker() -> None:
        await asyncio.sleep(0.01)  # the webhook is in flight by now
        await foreground.pause()
        order.append("worker went on")

    await asyncio.gather(webhook(), worker())
    assert order == ["webhook answered", "worker went on"]
    assert foreground.in_flight == 0


async def test_pause_gives_up_after_max_pause_under_an_endless_stream() -> None:
    foreground = Foreground(max_pause=0.1)
    with foreground.request():
        started = time.perf_counter()
        await foreground.pause()
        waited = time.perf_counter() - started
    assert 0.09 <= waited < 2.0


async def test_the_middleware_counts_webhooks_pages_and_the_api_only() -> None:
    foreground = Foreground()
    seen: dict[str, int] = {}

    async def record(request: web.Request) -> web.Response:
        seen[request.path] = foreground.in_flight
        if request.path.endswith("/fails"):
            raise web.HTTPBadRequest(text="no")
        return web.Response(text="ok")

    app = web.Application(middlewares=[foreground.middleware()])
    paths = (
        "/webhooks/whatsapp",
        "/webhooks/fails",
        "/admin/tickets",
        "/api/v1/tickets",
        "/static/admin.css",
        "/healthz",
    )
    for path in paths:
        app.router.add_get(path, record)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        for path in paths:
            async with http.get(server.make_url(path)) as response:
                assert response.status in (200, 400)
    assert seen == {
        "/webhooks/whatsapp": 1,
        "/webhooks/fails": 1,
        "/admin/tickets": 1,
        "/api/v1/tickets": 1,
        "/static/admin.css": 0,
        "/healthz": 0,
    }
    assert foreground.in_flight == 0  # a failed request is counted out too


async def test_a_worker_on_another_loop_waits_for_the_webhook_in_flight() -> None:
    """The workers' thread (`bot/background.py`) has its own loop: its pause looks at the
    count instead of awaiting the web loop's event, and still waits for the webhook."""
    foreground = Foreground(max_pause=5.0)
    order: list[str] = []
    in_flight = asyncio.Event()

    async def webhook() -> None:
        with foreground.request():
            in_flight.set()
            await asyncio.sleep(0.2)
            order.append("webhook answered")

    def worker() -> None:
        asyncio.run(foreground.pause())
        order.append("worker went on")

    task = asyncio.create_task(webhook())
    await in_flight.wait()
    await asyncio.to_thread(worker)
    await task
    assert order == ["webhook answered", "worker went on"]
