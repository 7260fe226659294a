"""The process's own endpoints: liveness, readiness, metrics; and the key to shared objects."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from bot.deps import Deps
from storage import inbound, outbox
from storage.db import ping

log = logging.getLogger(__name__)

DEPS = web.AppKey("deps", Deps)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the database answers."""
    deps = request.app[DEPS]
    try:
        await ping(deps.engine)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("readiness: database unreachable (%s)", type(exc).__name__)
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "database": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; queue depths are read from the database at scrape time."""
    deps = request.app[DEPS]
    try:
        async with deps.sessions() as session:
            deps.metrics.outbox_depth.set(await outbox.depth(session))
            waiting, parked = await inbound.counts(session)
            if deps.journal is not None:
                waiting += await deps.journal.waiting()
            deps.metrics.inbox_depth.set(waiting)
            deps.metrics.inbox_parked.set(parked)
    except (SQLAlchemyError, OSError):
        log.warning("metrics: database unreachable; depths not refreshed")
    body = generate_latest(deps.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
    ]
