"""Telegram: the webhook (or long polling) in, python-telegram-bot's Bot out."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from telegram import ForceReply, InlineKeyboardMarkup, InputFile, ReplyParameters, Update
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
from storage.enums import Channel

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "my_chat_member"]
TEXT_LIMIT = 4096  # Bot API sendMessage: 1-4096 characters after entities parsing
CAPTION_LIMIT = 1024


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
        return _inbound(update, received_at)
    except BadUpdate:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError) as exc:
        # de_json takes objects with required fields missing (a message without its chat),
        # and a date far outside the platform's range fails its conversion: whatever
        # cannot be read is refused here, not left to fail later.
        raise BadUpdate(f"not a Telegram Update ({type(exc).__name__})") from None


def _inbound(update: Update, received_at: datetime) -> Inbound | None:
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
    if update.edited_message is not None and message.chat.type != "private":
        return None  # staff desk: an edited message was already relayed or acted on once
    text = message.text or message.caption or ""
    media: list[Media] = []
    if message.document is not None:
        doc = message.document
        media.append(Media(url=doc.file_id, content_type=doc.mime_type, file_name=doc.file_name))
    if message.photo:  # one PhotoSize per size Telegram keeps: take the largest
        largest = max(message.photo, key=lambda size: size.width * size.height)
        media.append(Media(url=largest.file_id, content_type="image/jpeg"))
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
    return await inbound_store.store_now(
        deps.engine,
        journal=deps.journal,
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
    except (SQLAlchemyError, OSError) as exc:  # one line, not a traceback per webhook
        log.warning("telegram update %s not stored: %s", data["update_id"], type(exc).__name__)
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


# --- staff desk: sending (methods, pacing, splitting) -------------------------------------
# Methods that post a message (Telegram's broadcast limits count these); creating, renaming,
# closing and reopening a forum topic each post a service message, so they count too.
TOPIC_CHANGES = frozenset({"edit_forum_topic", "close_forum_topic", "reopen_forum_topic"})
POSTING = frozenset(
    {"send_message", "send_document", "send_photo", "create_forum_topic", *TOPIC_CHANGES}
)
_HTML_TOKEN = re.compile(r"<[^<>]*>|&#?[A-Za-z0-9]+;|\s+|[^<&\s]+|[<&]")
_HTML_OPEN = re.compile(r"<([a-zA-Z][a-zA-Z0-9-]*)[^<>]*>")


class SendWindows:
    """Telegram's published limits as sliding windows, per process: at most 30 messages a
    second overall, 20 a minute to one group, about one a second to one private chat.

    A token bucket (AIORateLimiter's) lets a full burst through and then keeps dripping, so
    a minute can hold 20 + 19 messages to a group; windows never do. A slot is taken before
    a call and moved to when its answer came (`settle`): Telegram counted the message in
    between, so the window is measured from no earlier than that. Each limit carries a
    small margin on top.
    """

    OVERALL = (30, 1.1)
    GROUP = (20, 61.0)
    PRIVATE = (1, 1.1)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._overall: deque[float] = deque()
        self._chats: dict[int, deque[float]] = {}
        self._reserved: dict[int, float] = {}  # chat -> when its message in flight took its slot

    def _wait(self, times: deque[float], limit: int, window: float, now: float) -> float:
        while times and now - times[0] >= window:
            times.popleft()
        return 0.0 if len(times) < limit else times[0] + window - now

    def reserve(self, chat_id: int) -> float:
        """Take a slot for one message to `chat_id` now (0.0), or say how long to wait."""
        now = self._clock()
        limit, window = self.GROUP if chat_id < 0 else self.PRIVATE
        chat = self._chats.setdefault(chat_id, deque())
        wait = max(
            self._wait(self._overall, *self.OVERALL, now), self._wait(chat, limit, window, now)
        )
        if wait > 0:
            return wait
        self._overall.append(now)
        chat.append(now)
        self._reserved[chat_id] = now
        if len(self._chats) > 4096:  # forget chats that have been quiet for a while
            for key in [k for k, v in self._chats.items() if not v or now - v[-1] > 120]:
                del self._chats[key]
        return 0.0

    def room_wait(self, chat_id: int, count: int) -> float:
        """How long until `count` messages in a row fit in the chat's window (0.0: now)."""
        limit, window = self.GROUP if chat_id < 0 else self.PRIVATE
        if chat_id > 0 or count <= 1:
            return 0.0  # a private chat's pieces wait about a second each, inline
        times = self._chats.get(chat_id, deque())
        now = self._clock()
        live = [t for t in times if now - t < window]
        if count > limit:  # more pieces than a minute takes: at least start on an empty one
            return live[-1] + window - now if live else 0.0
        over = len(live) + count - limit
        return 0.0 if over <= 0 else live[over - 1] + window - now

    def settle(self, chat_id: int) -> None:
        """The message to `chat_id` just reserved has been answered: count it from now.

        Several chats' messages are in flight at once and answered in any order, so the
        slot moved is the one this chat's message took, not simply the newest."""
        now = self._clock()
        taken = self._reserved.pop(chat_id, None)
        if taken is None:
            return
        for times in (self._overall, self._chats.get(chat_id)):
            if not times:
                continue
            for index in range(len(times) - 1, -1, -1):
                if times[index] == taken:
                    times[index] = max(taken, now)
                    break
            if any(a > b for a, b in zip(times, list(times)[1:], strict=False)):
                ordered = sorted(times)
                times.clear()
                times.extend(ordered)


def split_text(text: str, limit: int = TEXT_LIMIT, *, html: bool = False) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut after a line or a word when one
    is near; in HTML never inside a tag or an entity, and tags open at a cut are closed
    before it and opened again after it."""
    if len(text) <= limit:
        return [text]
    words = _HTML_TOKEN.findall(text) if html else re.findall(r"\s+|\S+", text)
    tokens = [w[i : i + limit // 4] for w in words for i in range(0, len(w), limit // 4)]
    pieces: list[str] = []
    opened: list[str] = []  # tags in force where the current piece starts
    current: list[str] = []
    for token in tokens:
        current.append(token)
        if _piece_size(opened, current, html) <= limit:
            continue
        cut = _cut(current[:-1])
        head, current = current[:cut], current[cut:]
        pieces.append(_render(opened, head, html))
        opened = _open_tags(opened, head) if html else []
        while current and not current[0].strip():
            current.pop(0)
    if current:
        pieces.append(_render(opened, current, html))
    return [piece for piece in pieces if piece.strip()]


def _open_tags(start: list[str], tokens: list[str]) -> list[str]:
    stack = list(start)
    for token in tokens:
        if token.startswith("</"):
            if stack:
                stack.pop()
        elif _HTML_OPEN.fullmatch(token):
            stack.append(token)
    return stack


def _closing(stack: list[str]) -> str:
    names = [match.group(1) for tag in stack if (match := _HTML_OPEN.fullmatch(tag))]
    return "".join(f"</{name}>" for name in reversed(names))


def _render(opened: list[str], tokens: list[str], html: bool) -> str:
    body = ("".join(opened) + "".join(tokens)).rstrip()
    return body + _closing(_open_tags(opened, tokens)) if html else body


def _piece_size(opened: list[str], tokens: list[str], html: bool) -> int:
    return len(_render(opened, tokens, html)) + (16 if html else 0)


def _cut(tokens: list[str]) -> int:
    """How many tokens to keep: up to the last newline, else the last space, in the later
    half; else all of them."""
    half = len(tokens) // 2
    newlines = [i for i, token in enumerate(tokens) if i >= half and "\n" in token]
    spaces = [i for i, token in enumerate(tokens) if i >= half and not token.strip()]
    found = newlines or spaces
    return found[-1] + 1 if found else max(len(tokens), 1)


StoredFiles = Callable[[int], Awaitable[tuple[str, bytes] | None]]


class TelegramSender:
    """Sends outbox payloads with the Bot API method they name (sendMessage by default).

    Payload keys: text, parse_mode, reply_markup (an inline keyboard or a force reply, as
    dicts), thread_id, reply_to (message id; sent even if that message is gone); `method`
    is send_message, send_document (document, caption), send_photo (photo, caption),
    create_forum_topic (name; answers the topic's thread id), edit_forum_topic (thread_id,
    name), close_forum_topic and reopen_forum_topic (thread_id), edit_message_text
    (message_id), edit_message_reply_markup (message_id) or answer_callback_query
    (callback_id, text, show_alert). Texts over 4096 characters go as several messages.
    """

    def __init__(
        self,
        bot: ExtBot[None],
        *,
        windows: SendWindows | None = None,
        max_wait: float = 2.0,
        stored: StoredFiles | None = None,
    ) -> None:
        self._bot = bot
        self._windows = windows or SendWindows()
        self._max_wait = max_wait
        self._stored = stored

    async def _upload(self, file_id: int) -> InputFile:
        """A file we keep (`stored_file`: a customer's WhatsApp media), uploaded to Telegram."""
        if self._stored is None:
            raise SendError("stored files cannot be sent from here", retryable=False)
        found = await self._stored(file_id)
        if found is None:
            raise SendError(f"stored file {file_id} is gone", retryable=False)
        name, data = found
        return InputFile(data, filename=name)

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
            if "not modified" in exc.message.lower().replace("_", " "):
                return None  # an edit (TOPIC_NOT_MODIFIED too) that changes nothing is done
            raise SendError(f"telegram bad request: {exc.message[:120]}", retryable=False) from None
        except (TimedOut, NetworkError) as exc:
            raise SendError(f"telegram network: {type(exc).__name__}", retryable=True) from None
        except TelegramError as exc:
            raise SendError(f"telegram error: {type(exc).__name__}", retryable=True) from None

    async def _pace(self, chat_id: int) -> None:
        """Wait for a slot under Telegram's limits; a long wait goes back to the outbox
        (which keeps the order per chat) instead of holding the row's lease."""
        while (wait := self._windows.reserve(chat_id)) > 0:
            if wait > self._max_wait:
                raise SendError("telegram send budget", retryable=True, retry_after=wait)
            await asyncio.sleep(wait)

    def _markup(self, markup: Mapping[str, Any] | None) -> Any:
        if not markup:
            return None
        if "force_reply" in markup:
            return ForceReply(
                selective=bool(markup.get("selective")),
                input_field_placeholder=markup.get("input_field_placeholder"),
            )
        return InlineKeyboardMarkup.de_json(dict(markup), self._bot)

    async def _call(self, chat_id: int, payload: Mapping[str, Any]) -> str | None:
        method = payload.get("method", "send_message")
        reply_markup = self._markup(payload.get("reply_markup"))
        if method == "edit_message_text":
            await self._bot.edit_message_text(
                chat_id=chat_id,
                message_id=int(payload["message_id"]),
                text=payload["text"][:TEXT_LIMIT],
                parse_mode=payload.get("parse_mode"),
                reply_markup=reply_markup,
            )
            return str(payload["message_id"])
        if method == "edit_message_reply_markup":
            await self._bot.edit_message_reply_markup(
                chat_id=chat_id, message_id=int(payload["message_id"]), reply_markup=reply_markup
            )
            return str(payload["message_id"])
        if method == "answer_callback_query":
            await self._bot.answer_callback_query(
                payload["callback_id"],
                text=payload.get("text"),
                show_alert=bool(payload.get("show_alert", False)),
            )
            return None
        if method not in POSTING:
            raise SendError(f"unknown telegram method {method!r}", retryable=False)
        if method == "send_message":  # all pieces of a long text go, or none yet
            pieces = len(split_text(payload["text"], html=payload.get("parse_mode") == "HTML"))
            if (wait := self._windows.room_wait(chat_id, pieces)) > self._max_wait:
                raise SendError("telegram send budget", retryable=True, retry_after=wait)
        await self._pace(chat_id)
        try:
            return await self._post(chat_id, method, payload, reply_markup)
        finally:
            self._windows.settle(chat_id)

    async def _post(
        self, chat_id: int, method: str, payload: Mapping[str, Any], reply_markup: Any
    ) -> str | None:
        if method == "create_forum_topic":
            topic = await self._bot.create_forum_topic(chat_id=chat_id, name=payload["name"][:128])
            return str(topic.message_thread_id)
        if method in TOPIC_CHANGES:
            thread = int(payload["thread_id"])
            if method == "edit_forum_topic":
                await self._bot.edit_forum_topic(chat_id, thread, name=payload["name"][:128])
            elif method == "close_forum_topic":
                await self._bot.close_forum_topic(chat_id, thread)
            else:
                await self._bot.reopen_forum_topic(chat_id, thread)
            return None
        thread_id = payload.get("thread_id")
        reply = (
            ReplyParameters(message_id=int(payload["reply_to"]), allow_sending_without_reply=True)
            if payload.get("reply_to")
            else None
        )
        if method in ("send_document", "send_photo"):
            caption = payload.get("caption")
            common: dict[str, Any] = {
                "chat_id": chat_id,
                "caption": caption[:CAPTION_LIMIT] if caption else None,
                "parse_mode": payload.get("parse_mode") if caption else None,
                "reply_markup": reply_markup,
                "message_thread_id": thread_id,
                "reply_parameters": reply,
            }
            key = "photo" if method == "send_photo" else "document"
            content: Any = payload.get(key)
            if payload.get("stored_file") is not None:
                content = await self._upload(int(payload["stored_file"]))
            if method == "send_photo":
                message = await self._bot.send_photo(photo=content, **common)
            else:
                message = await self._bot.send_document(document=content, **common)
            return str(message.message_id)
        pieces = split_text(payload["text"], html=(payload.get("parse_mode") or "") == "HTML")
        first: str | None = None
        for number, piece in enumerate(pieces):
            if number:
                self._windows.settle(chat_id)
                await self._pace(chat_id)
            last = number == len(pieces) - 1
            message = await self._bot.send_message(
                chat_id=chat_id,
                text=piece,
                parse_mode=payload.get("parse_mode"),
                reply_markup=reply_markup if last else None,
                message_thread_id=thread_id,
                reply_parameters=reply if number == 0 else None,
            )
            first = first or str(message.message_id)
        return first
