"""Composition root: `create_app(settings)` wires everything; nothing else builds shared objects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.deps import Deps
from bot.dispatch import Dispatcher
from bot.inbox import InboxWorker
from bot.intake import Intake
from bot.mail import EmailSender, make_mailer
from bot.messages import Inbound
from bot.metrics import Metrics
from bot.outbox import OutboxWorker, Sender
from bot.scheduler import Clock
from bot.settings import Settings
from bot.tenants import Tenants, load_tenants
from handlers import telegram, whatsapp
from handlers.web import DEPS, routes
from storage.db import create_engine, is_empty, migrate, session_factory
from storage.enums import Channel
from storage.models import InboundMessage, utcnow

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # Twilio forms and Telegram updates are far smaller


def create_app(
    settings: Settings,
    *,
    tenants: Tenants | None = None,
    now: Callable[[], datetime] = utcnow,
    workers: bool = True,
) -> web.Application:
    """The web process: webhooks, health and metrics, and the background workers."""
    app = web.Application(client_max_size=MAX_BODY)
    metrics = Metrics()
    loaded = tenants if tenants is not None else load_tenants(settings.tenants_dir)
    engine = create_engine(settings.database_url)
    deps = Deps(
        settings=settings,
        tenants=loaded,
        engine=engine,
        sessions=session_factory(engine),
        metrics=metrics,
        now=now,
        mail=EmailSender(make_mailer(settings), settings.secret()),
    )
    app[DEPS] = deps
    app.add_routes(routes())
    app.add_routes(
        [
            web.post("/webhooks/whatsapp", whatsapp.receive_message),
            web.post("/webhooks/whatsapp/status", whatsapp.receive_status),
            web.post("/webhooks/telegram", telegram.receive_update),
        ]
    )
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_telegram_bot)
    if workers:
        app.cleanup_ctx.append(_workers)
        app.cleanup_ctx.append(_scheduler)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    """Open the engine; a brand-new SQLite database is migrated on the spot."""
    deps = app[DEPS]
    if deps.settings.is_sqlite and await is_empty(deps.engine):
        log.info("empty SQLite database: applying migrations")
        await migrate(deps.engine)
    yield
    await deps.engine.dispose()


async def _telegram_bot(app: web.Application) -> AsyncIterator[None]:
    """The Bot client, started in the background so an unreachable Telegram delays nothing."""
    deps = app[DEPS]
    if not deps.settings.telegram_enabled:
        yield
        return
    bot = telegram.make_bot(deps.settings)
    deps.telegram_bot = bot
    task = asyncio.create_task(_start_telegram(deps), name="telegram-start")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    with suppress(Exception):
        await bot.shutdown()


async def _start_telegram(deps: Deps) -> None:
    bot = deps.telegram_bot
    delay = 1.0
    while True:
        try:
            await bot.initialize()
            if deps.settings.public_url:
                await telegram.register_webhook(deps)
                return
            break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "telegram start-up failed (%s); retrying in %.0fs", type(exc).__name__, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60)
    await telegram.poll(deps)


def _parsers(deps: Deps) -> dict[str, Callable[[InboundMessage], Inbound | None]]:
    def whatsapp_parser(row: InboundMessage) -> Inbound | None:
        form = {k: v if isinstance(v, str) else v[0] for k, v in row.payload.items()}
        return whatsapp.parse(form, tenant=row.tenant, received_at=row.received_at)

    def telegram_parser(row: InboundMessage) -> Inbound | None:
        return telegram.parse(row.payload, deps.telegram_bot, received_at=row.received_at)

    return {Channel.WHATSAPP: whatsapp_parser, Channel.TELEGRAM: telegram_parser}


def _senders(deps: Deps) -> tuple[dict[str, Sender], list[Any]]:
    senders: dict[str, Sender] = {"email": deps.mail}
    closers: list[Any] = []
    if deps.settings.whatsapp_enabled:
        sender = whatsapp.WhatsAppSender(deps.settings)
        senders[Channel.WHATSAPP] = sender
        closers.append(sender.close)
    if deps.telegram_bot is not None:
        senders[Channel.TELEGRAM] = telegram.TelegramSender(deps.telegram_bot)
    return senders, closers


async def _workers(app: web.Application) -> AsyncIterator[None]:
    """The inbox and outbox workers of this process, stopped cleanly on shutdown."""
    deps = app[DEPS]
    senders, closers = _senders(deps)
    outbox_worker = OutboxWorker(
        deps.sessions, senders, observe=deps.metrics.count_outbound, now=deps.now
    )
    intake = Intake(deps.tenants, deps.mail, deps.settings.secret())
    inbox_worker = InboxWorker(
        deps.sessions, Dispatcher(intake, _parsers(deps), now=deps.now), now=deps.now
    )
    inbox_worker.after_commit.append(outbox_worker.wake)
    deps.wakers.append(inbox_worker.wake)
    tasks = [
        asyncio.create_task(inbox_worker.run(), name="inbox"),
        asyncio.create_task(outbox_worker.run(), name="outbox"),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for close in closers:
        await close()


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    """The clock (reminders, escalations, expiries) in this process unless RUN_SCHEDULER=false."""
    deps = app[DEPS]
    if not deps.settings.run_scheduler:
        yield
        return
    clock = Clock(deps.sessions, deps.tenants, now=deps.now)
    clock.start()
    yield
    await clock.stop()
