"""Composition root: `create_app(settings)` wires everything; nothing else builds shared objects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import datetime
from functools import partial
from typing import Any

from aiohttp import web

from bot import sandbox
from bot.background import WorkerThread
from bot.deps import Deps
from bot.desk import Desk
from bot.dispatch import Dispatcher
from bot.inbox import InboxWorker
from bot.intake import Intake
from bot.mail import EmailSender, make_mailer
from bot.messages import Inbound
from bot.metrics import Metrics
from bot.outbox import OutboxWorker, Sender
from bot.polling import stop_all
from bot.scheduler import Clock
from bot.settings import Settings
from bot.tenants import Tenants, load_tenants
from bot.webhooks_out import WebhookRelay, WebhookSender
from handlers import admin, api, staff, telegram, whatsapp
from handlers.web import DEPS, routes
from storage import crypto
from storage.db import create_engine, is_empty, migrate, session_factory
from storage.desk_models import DeskFile
from storage.enums import Channel
from storage.inbound import Journal
from storage.models import InboundMessage, utcnow

log = logging.getLogger(__name__)

INBOX_CONCURRENCY = 3  # PostgreSQL: 8 answered no faster and doubled webhook p50 (bench)
MAX_BODY = 1024 * 1024  # Twilio forms and Telegram updates are far smaller


def create_app(
    settings: Settings,
    *,
    tenants: Tenants | None = None,
    now: Callable[[], datetime] = utcnow,
    workers: bool = True,
) -> web.Application:
    """The web process: webhooks, health and metrics, and the background workers."""
    crypto.configure(settings.keyring())
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
        mail=EmailSender(make_mailer(settings), settings.secret(), mail_from=settings.mail_from),
        journal=Journal.beside(settings.database_url),
    )
    app = web.Application(client_max_size=MAX_BODY, middlewares=[deps.foreground.middleware()])
    app[DEPS] = deps
    app.add_routes(routes())
    app.add_routes(
        [
            web.post("/webhooks/whatsapp", whatsapp.receive_message),
            web.post("/webhooks/whatsapp/status", whatsapp.receive_status),
            web.post("/webhooks/telegram", telegram.receive_update),
        ]
    )
    app.add_subapp("/admin", admin.make_app())
    app.add_subapp("/api/v1", api.make_app(loaded))
    app[staff.DESK] = Desk(loaded, settings.secret(), settings.public_url)
    app.add_routes(staff.routes())
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(partial(_background, workers=workers))
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    """Open the engine (and a SQLite file's journal); a brand-new SQLite database is
    migrated on the spot."""
    deps = app[DEPS]
    if deps.settings.is_sqlite and await is_empty(deps.engine):
        log.info("empty SQLite database: applying migrations")
        await migrate(deps.engine)
    if deps.journal is not None:
        await deps.journal.open()
    yield
    if deps.journal is not None:
        await deps.journal.close()
    await deps.engine.dispose()


async def _background(app: web.Application, *, workers: bool) -> AsyncIterator[None]:
    """The Telegram client, the workers and the clock: on PostgreSQL on a thread and loop of
    their own (`bot/background.py`), on SQLite on this loop beside the webhooks."""
    deps, desk = app[DEPS], app[staff.DESK]
    work = partial(_work, desk=desk, workers=workers)
    if deps.settings.is_sqlite or not workers:
        async with work(deps):
            yield
        return
    if deps.settings.telegram_enabled:  # this loop's copy only reads updates: never started
        deps.telegram_bot = telegram.make_bot(deps.settings)
    async with WorkerThread(deps, work):
        yield


@asynccontextmanager
async def _work(deps: Deps, *, desk: Desk, workers: bool) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(_telegram_bot(deps))
        if workers:
            await stack.enter_async_context(_workers(deps, desk))
            await stack.enter_async_context(_scheduler(deps))
        yield


@asynccontextmanager
async def _telegram_bot(deps: Deps) -> AsyncIterator[None]:
    """The Bot client, started in the background so an unreachable Telegram delays nothing."""
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


def _stored_files(deps: Deps, desk: Desk) -> telegram.StoredFiles:
    """How the Telegram sender reads a file we keep (a customer's WhatsApp media)."""

    async def load(file_id: int) -> tuple[str, bytes] | None:
        async with deps.sessions() as session:
            stored = await session.get(DeskFile, file_id)
            return None if stored is None else (stored.name, desk.open_file(stored))

    return load


def _senders(deps: Deps, desk: Desk) -> tuple[dict[str, Sender], list[Any]]:
    senders: dict[str, Sender] = {"email": deps.mail}
    closers: list[Any] = []
    if deps.settings.whatsapp_enabled:
        sender = whatsapp.WhatsAppSender(deps.settings)
        senders[Channel.WHATSAPP] = sender
        closers.append(sender.close)
    if deps.telegram_bot is not None:
        senders[Channel.TELEGRAM] = telegram.TelegramSender(
            deps.telegram_bot, stored=_stored_files(deps, desk)
        )
    webhooks = WebhookSender(deps.tenants, deps.settings.secret())
    senders["webhook"] = webhooks
    closers.append(webhooks.close)
    return sandbox.route(senders), closers


@asynccontextmanager
async def _workers(deps: Deps, desk: Desk) -> AsyncIterator[None]:
    """The inbox and outbox workers of this process, stopped cleanly on shutdown."""
    senders, closers = _senders(deps, desk)
    if deps.telegram_bot is not None:
        desk.files = staff.TelegramFiles(deps.telegram_bot)
        desk.media[Channel.TELEGRAM] = desk.files
    settings = deps.settings
    if settings.twilio_account_sid and settings.twilio_auth_token:
        desk.media[Channel.WHATSAPP] = whatsapp.TwilioMedia(
            settings.twilio_base,
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
        )
    outbox_worker = OutboxWorker(
        deps.sessions,
        senders,
        observe=deps.metrics.count_outbound,
        now=deps.now,
        after_send=desk.after_send,
        pause=deps.foreground.pause,
    )
    intake = Intake(deps.tenants, deps.mail, deps.settings.secret(), desk=desk)
    inbox_worker = InboxWorker(
        deps.sessions,
        Dispatcher(intake, _parsers(deps), now=deps.now, desk=desk),
        now=deps.now,
        concurrency=1 if settings.is_sqlite else INBOX_CONCURRENCY,
        pause=deps.foreground.pause,
        journal=deps.journal,
    )
    inbox_worker.after_commit.append(outbox_worker.wake)
    deps.wakers.append(inbox_worker.wake)
    relay = WebhookRelay(deps.sessions, deps.tenants, now=deps.now, after_commit=outbox_worker.wake)
    pollers = [inbox_worker.poller, outbox_worker.poller, relay.poller]
    tasks = [asyncio.create_task(p.run(), name=p.name) for p in pollers]
    yield
    await stop_all(pollers, tasks)
    for close in closers:
        await close()


@asynccontextmanager
async def _scheduler(deps: Deps) -> AsyncIterator[None]:
    """The clock (reminders, escalations, expiries) in this process unless RUN_SCHEDULER=false."""
    if not deps.settings.run_scheduler:
        yield
        return
    clock = Clock(deps.sessions, deps.tenants, now=deps.now)
    clock.start()
    yield
    await clock.stop()
