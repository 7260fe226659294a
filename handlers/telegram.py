"""Telegram: the webhook (or long polling) in, python-telegram-bot's Bot out."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from telegram import InlineKeyboardMarkup, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import AIORateLimiter, ExtBot
from telegram.request import HTTPXRequest

from bot.deps import Deps
from bot.messages import Inbound, Media
from bot.outbox import SendError
from bot.settings import Settings
from handlers.web import DEPS
from storage import inbound as inbound_store
from storage.db import transaction
from storage.enums import Channel

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "my_chat_member"]
TEXT_LIMIT = 4096  # Bot API sendMessage: 1-4096 characters after entities parsing


class BadUpdate(ValueError):
    """The body is not a Telegram Update we can store."""


def make_bot(settings: Settings) -> ExtBot[None]:
    """The real python-telegram-bot client at TELEGRAM_API_BASE_URL, rate-limited."""
    assert settings.telegram_bot_token is not None
    base = settings.telegram_base
    return ExtBot(
        settings.telegram_bot_token.get_secret_value(),
        base_url=f"{base}/bot",
        base_file_url=f"{base}/file/bot",
        request=HTTPXRequest(connection_pool_size=32, read_timeout=15, write_timeout=15),
        get_updates_request=HTTPXRequest(connection_pool_size=2, read_timeout=40),
        rate_limiter=AIORateLimiter(max_retries=0),  # type: ignore[arg-type]
    )


def _sender_of(update: Update) -> str:
    chat = update.effective_chat
    if chat is not None:
        return str(chat.id)
    user = update.effective_user
    return f"user:{user.id}" if user is not None else "none"


def check_update(data: object) -> dict[str, Any]:
    """A JSON object with an integer update_id, or BadUpdate."""
    if not isinstance(data, dict):
        raise BadUpdate("expected a JSON object")
    update_id = data.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or update_id < 0:
        raise BadUpdate("update_id must be a non-negative integer")
    return data


def parse(data: Mapping[str, Any], bot: Any, *, received_at: datetime) -> Inbound | None:
    """Turn an Update into an Inbound; None for updates that carry nothing to act on."""
    try:
        update = Update.de_json(dict(data), bot)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadUpdate(f"not a Telegram Update ({type(exc).__name__})") from None
    sender = _sender_of(update)
    if update.callback_query is not None:
        query = update.callback_query
        message = query.message
        return Inbound(
            channel=Channel.TELEGRAM,
            provider_id=str(update.update_id),
            sender=sender,
            received_at=received_at,
            user_id=query.from_user.id,
            chat_type=update.effective_chat.type if update.effective_chat else None,
            display_name=query.from_user.full_name,
            language_code=query.from_user.language_code,
            callback_data=query.data,
            callback_id=query.id,
            message_id=message.message_id if message is not None else None,
        )
    message = update.message or update.edited_message
    if message is None:
        return None
    text = message.text or message.caption or ""
    media: list[Media] = []
    if message.document is not None:
        doc = message.document
        media.append(Media(url=doc.file_id, content_type=doc.mime_type, file_name=doc.file_name))
    if message.photo:
        media.append(Media(url=message.photo[-1].file_id, content_type="image/jpeg"))
    start_param = None
    if text.startswith("/start"):
        parts = text.split(maxsplit=1)
        if parts[0] in ("/start",) or parts[0].startswith("/start@"):
            start_param = parts[1].strip() if len(parts) > 1 else ""
    user = message.from_user
    return Inbound(
        channel=Channel.TELEGRAM,
        provider_id=str(update.update_id),
        sender=str(message.chat.id),
        received_at=received_at,
        text=text,
        media=tuple(media),
        user_id=user.id if user else None,
        chat_type=message.chat.type,
        display_name=user.full_name if user else None,
        language_code=user.language_code if user else None,
        start_param=start_param,
        reply_to_message_id=(
            message.reply_to_message.message_id if message.reply_to_message else None
        ),
        thread_id=message.message_thread_id,
        message_id=message.message_id,
    )


async def store_update(deps: Deps, data: dict[str, Any]) -> int | None:
    """Store one update unless its update_id was seen; the row id, or None for a repeat."""
    update = Update.de_json(dict(data), deps.telegram_bot)
    async with transaction(deps.sessions) as session:
        return await inbound_store.store(
            session,
            channel=Channel.TELEGRAM,
            provider_id=str(data["update_id"]),
            kind="callback" if update.callback_query else "message",
            sender=_sender_of(update),
            tenant=None,
            payload=data,
            now=deps.now(),
        )


async def receive_update(request: web.Request) -> web.Response:
    """POST /webhooks/telegram: check the secret, store the update once, answer 200."""
    deps: Deps = request.app[DEPS]
    started = time.perf_counter()
    result, response = await _receive_update(request, deps)
    deps.metrics.inbound.labels(channel="telegram", result=result).inc()
    deps.metrics.webhook_latency.labels(channel="telegram").observe(time.perf_counter() - started)
    return response


async def _receive_update(request: web.Request, deps: Deps) -> tuple[str, web.Response]:
    secret = deps.settings.telegram_webhook_secret
    if deps.telegram_bot is None:
        return "disabled", web.json_response(
            {"error": "the Telegram channel is not configured"}, status=404
        )
    given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
    if secret is None or not secrets.compare_digest(
        given.encode(), secret.get_secret_value().encode()
    ):
        log.warning("telegram webhook: wrong or missing secret token")
        return "forbidden", web.json_response({"error": "wrong secret token"}, status=403)
    try:
        data = check_update(json.loads(await request.read()))
        parse(data, deps.telegram_bot, received_at=deps.now())
    except (ValueError, UnicodeDecodeError) as exc:
        reason = str(exc) if isinstance(exc, BadUpdate) else "body is not JSON"
        return "invalid", web.json_response({"error": reason}, status=400)
    try:
        row_id = await store_update(deps, data)
    except (SQLAlchemyError, OSError):
        log.exception("telegram update %s could not be stored", data["update_id"])
        return "unavailable", web.json_response({"error": "storage unavailable"}, status=503)
    if row_id is None:
        log.info("telegram update %s is a repeat; not processed again", data["update_id"])
        return "duplicate", web.json_response({"ok": True})
    deps.wake_inbox()
    return "accepted", web.json_response({"ok": True})


async def register_webhook(deps: Deps) -> None:
    """Point Telegram at PUBLIC_BASE_URL/webhooks/telegram with our secret."""
    settings = deps.settings
    assert settings.public_url and settings.telegram_webhook_secret
    await deps.telegram_bot.set_webhook(
        url=f"{settings.public_url}/webhooks/telegram",
        secret_token=settings.telegram_webhook_secret.get_secret_value(),
        allowed_updates=ALLOWED_UPDATES,
    )
    log.info("telegram webhook registered")


async def poll(deps: Deps, *, poll_seconds: int = 25) -> None:
    """Long-poll getUpdates, storing each update before confirming it with the next offset."""
    bot = deps.telegram_bot
    await bot.delete_webhook(drop_pending_updates=False)
    offset: int | None = None
    while True:
        try:
            updates = await bot.get_updates(
                offset=offset, timeout=poll_seconds, allowed_updates=ALLOWED_UPDATES
            )
        except (TimedOut, NetworkError, RetryAfter) as exc:
            log.warning("telegram polling: %s; retrying", type(exc).__name__)
            await asyncio.sleep(2)
            continue
        for update in updates:
            data = update.to_dict()
            while True:
                try:
                    await store_update(deps, data)
                    break
                except (SQLAlchemyError, OSError):
                    log.exception(
                        "telegram update %s could not be stored; retrying", update.update_id
                    )
                    await asyncio.sleep(2)
            offset = update.update_id + 1
        if updates:
            deps.wake_inbox()


def _retry_after_seconds(value: int | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramSender:
    """Sends outbox payloads with the Bot API method they name (sendMessage by default)."""

    def __init__(self, bot: ExtBot[None]) -> None:
        self._bot = bot

    async def send(self, recipient: str, payload: Mapping[str, Any]) -> str | None:
        try:
            return await self._call(int(recipient), payload)
        except RetryAfter as exc:
            raise SendError(
                "telegram flood control",
                retryable=True,
                retry_after=_retry_after_seconds(exc.retry_after),
            ) from None
        except (Forbidden, InvalidToken, ChatMigrated) as exc:
            raise SendError(f"telegram refused: {type(exc).__name__}", retryable=False) from None
        except BadRequest as exc:
            if "not modified" in exc.message.lower():
                return None  # an edit that changes nothing has nothing left to do
            raise SendError(f"telegram bad request: {exc.message[:120]}", retryable=False) from None
        except (TimedOut, NetworkError) as exc:
            raise SendError(f"telegram network: {type(exc).__name__}", retryable=True) from None
        except TelegramError as exc:
            raise SendError(f"telegram error: {type(exc).__name__}", retryable=True) from None

    async def _call(self, chat_id: int, payload: Mapping[str, Any]) -> str | None:
        method = payload.get("method", "send_message")
        markup = payload.get("reply_markup")
        reply_markup = InlineKeyboardMarkup.de_json(markup, self._bot) if markup else None
        if method == "edit_message_text":
            await self._bot.edit_message_text(
                chat_id=chat_id,
                message_id=int(payload["message_id"]),
                text=payload["text"][:TEXT_LIMIT],
                parse_mode=payload.get("parse_mode"),
                reply_markup=reply_markup,
            )
            return str(payload["message_id"])
        if method == "answer_callback_query":
            await self._bot.answer_callback_query(payload["callback_id"], text=payload.get("text"))
            return None
        message = await self._bot.send_message(
            chat_id=chat_id,
            text=payload["text"][:TEXT_LIMIT],
            parse_mode=payload.get("parse_mode"),
            reply_markup=reply_markup,
            message_thread_id=payload.get("thread_id"),
        )
        return str(message.message_id)
