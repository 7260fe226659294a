"""A loopback Telegram Bot API server that checks every call against the published method list."""

from __future__ import annotations

import asyncio
import html
import itertools
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from tests.fakes.contracts import ContractViolation, UploadedFile, check_telegram_call
from tests.fakes.server import LoopbackServer
from tests.said import written

DEFAULT_TOKEN = "123456789:AAFakeTelegramTokenForRightsdeskTests"

# Methods that post a message to a chat and so count towards Telegram's broadcast limits.
SEND_METHODS = frozenset(
    {"sendMessage", "sendDocument", "sendPhoto", "sendAudio", "sendVideo", "sendVoice",
     "sendAnimation", "sendSticker", "sendLocation", "sendContact", "sendPoll", "sendMediaGroup",
     "copyMessage", "forwardMessage"}
)  # fmt: skip
CHAT_ACTIONS = frozenset(
    {"typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
     "upload_document", "choose_sticker", "find_location", "record_video_note",
     "upload_video_note"}
)  # fmt: skip
# python-telegram-bot's `Defaults` add these to every method it sends through its shared
# message helper, editMessageReplyMarkup included; Telegram ignores them there.
PTB_DEFAULTS = frozenset({"parse_mode", "disable_notification", "protect_content",
                          "link_preview_options"})  # fmt: skip
TOPIC_COLORS = frozenset({7322096, 16766590, 13338331, 9367192, 16749490, 16478047})
HTML_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
     "tg-emoji", "tg-time", "code", "pre", "blockquote"}
)  # fmt: skip
_HTML_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)(?:\s[^<>]*)?>")
_MARKDOWN_V2_RESERVED = frozenset(".!#+-={}")
_COMMAND = re.compile(r"[a-z0-9_]{1,32}")
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")

ChatId = int | str
Params = dict[str, Any]


@dataclass
class RecordedCall:
    """One Bot API call: `params` decoded to their types (JSON objects as dicts, files as
    `UploadedFile`), `result` the `result` answered, or the error body when `status` != 200."""

    method: str
    params: Params
    result: Any
    status: int
    at: float


@dataclass(frozen=True)
class RateViolation:
    """Sending that went over one of Telegram's published broadcast limits (recorded only)."""

    rule: str
    chat_id: ChatId | None
    count: int
    at: float


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_name: str | None = None
    mime_type: str | None = None


class ApiError(Exception):
    """An error answer; `violation` marks calls that break the published rules."""

    def __init__(
        self,
        status: int,
        description: str,
        *,
        retry_after: int | None = None,
        violation: bool = False,
    ) -> None:
        super().__init__(description)
        self.status, self.description = status, description
        self.retry_after, self.violation = retry_after, violation

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _bad_request(description: str, *, violation: bool = False) -> ApiError:
    return ApiError(400, f"Bad Request: {description}", violation=violation)


class FakeTelegram(LoopbackServer):
    """The Bot API at `{url}/bot{token}/{method}`, files at `{url}/file/bot{token}/{path}`.

    Pass `base_url=fake.base_url, base_file_url=fake.base_file_url` to `telegram.Bot`.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "rightsdesk_test_bot",
        check_rate_limits: bool = True,
    ) -> None:
        super().__init__()
        self.token = token
        self.bot_user: dict[str, Any] = {
            "id": int(token.split(":")[0]) if token.split(":")[0].isdigit() else 1,
            "is_bot": True,
            "first_name": "Rightsdesk Test",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.check_rate_limits = check_rate_limits
        self.calls: list[RecordedCall] = []
        self.failed_calls: list[RecordedCall] = []
        self.violations: list[ContractViolation] = []
        self.rate_violations: list[RateViolation] = []
        self.chats: dict[ChatId, dict[str, Any]] = {}
        self.blocked: set[ChatId] = set()
        self.messages: dict[tuple[ChatId, int], dict[str, Any]] = {}
        self.topics: dict[tuple[ChatId, int], str] = {}  # (chat, thread) -> the topic's name
        self.closed_topics: set[tuple[ChatId, int]] = set()
        self.files: dict[str, StoredFile] = {}
        self.commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.webhook: dict[str, Any] = {"url": ""}
        self.updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._new_update = asyncio.Event()
        self._closing = False
        self._message_ids: defaultdict[ChatId, itertools.count[int]] = defaultdict(
            lambda: itertools.count(1)
        )
        self._sent_at: deque[float] = deque()
        self._sent_at_by_chat: defaultdict[ChatId, deque[float]] = defaultdict(deque)
        self._methods: dict[str, Callable[[Params], Awaitable[Any]]] = {
            "getMe": self._get_me,
            "sendMessage": self._send_message,
            "sendDocument": self._send_document,
            "sendPhoto": self._send_photo,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "answerCallbackQuery": self._answer_callback_query,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "getUpdates": self._get_updates,
            "createForumTopic": self._create_forum_topic,
            "editForumTopic": self._edit_forum_topic,
            "closeForumTopic": self._close_forum_topic,
            "reopenForumTopic": self._reopen_forum_topic,
            "getFile": self._get_file,
            "setMyCommands": self._set_my_commands,
            "deleteMessage": self._delete_message,
            "sendChatAction": self._send_chat_action,
        }

    # ------------------------------------------------------------------ server

    @property
    def base_url(self) -> str:
        """`base_url` for `telegram.Bot`."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """`base_file_url` for `telegram.Bot`."""
        return f"{self.url}/file/bot"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)

    async def stop(self) -> None:
        self._closing = True
        self._new_update.set()  # release long polls so the server can shut down at once
        await super().stop()
        self._closing = False

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw: Params = {}
        try:
            raw = await _read_params(request)
            if fault := self.take_fault():
                phrase = HTTPStatus(fault.status).phrase
                if fault.retry_after is not None:
                    phrase += f": retry after {fault.retry_after}"
                raise ApiError(fault.status, phrase, retry_after=fault.retry_after)
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized", violation=True)
            check = check_telegram_call(method, raw, tolerated=PTB_DEFAULTS)
            if check.method is None:
                raise ApiError(404, "Not Found", violation=True)
            method, params = check.method, check.params
            if check.problems:
                raise _bad_request("; ".join(check.problems), violation=True)
            handler = self._methods.get(method)
            if handler is None:
                raise ApiError(501, f"{method} is not implemented by FakeTelegram", violation=True)
            result = await handler(params)
        except ApiError as error:
            if error.violation:
                self.violations.append(
                    ContractViolation("telegram", method, (error.description,), raw)
                )
            self.failed_calls.append(
                RecordedCall(method, raw, error.body(), error.status, time.time())
            )
            return web.json_response(error.body(), status=error.status)
        self.calls.append(RecordedCall(method, params, result, 200, time.time()))
        if method in SEND_METHODS and self.check_rate_limits:
            self._note_sent(result["chat"]["id"])
        return web.json_response({"ok": True, "result": result})

    async def _handle_file(self, request: web.Request) -> web.Response:
        if fault := self.take_fault():
            return web.Response(status=fault.status)
        path = request.match_info["path"]
        stored = next((f for f in self.files.values() if f.file_path == path), None)
        if request.match_info["token"] != self.token or stored is None:
            return web.json_response(
                {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
            )
        return web.Response(body=stored.data, content_type="application/octet-stream")

    # ------------------------------------------------------------------ test helpers

    def calls_to(self, method: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.method == method]

    def sent_messages(self, chat_id: ChatId | None = None) -> list[RecordedCall]:
        """Accepted calls that posted a message, to `chat_id` if given."""
        return [
            c
            for c in self.calls
            if c.method in SEND_METHODS and chat_id in (None, c.result["chat"]["id"])
        ]

    def messages_in(self, chat_id: ChatId) -> list[dict[str, Any]]:
        """The chat as it looks now: every message not deleted, with its edits."""
        return [m for (chat, _), m in sorted(self.messages.items()) if chat == chat_id]

    def add_chat(
        self,
        chat_id: int,
        *,
        chat_type: str | None = None,
        title: str | None = None,
        is_forum: bool = False,
        username: str | None = None,
    ) -> dict[str, Any]:
        """Make a chat known with its kind; unknown chats are made up from their id's sign."""
        chat = self._chat(chat_id)
        chat.update({k: v for k, v in {"type": chat_type, "title": title}.items() if v})
        if is_forum:
            chat["is_forum"] = True
        if username:
            chat["username"] = username
        return chat

    def block_chat(self, chat_id: ChatId) -> None:
        """Let the user of a private chat block the bot: sends get 403."""
        self.blocked.add(chat_id)

    def add_file(
        self, data: bytes, *, file_name: str | None = None, mime_type: str | None = None
    ) -> dict[str, Any]:
        """Store a file as if a user had sent it; returns its `Document` object."""
        stored = self._store_file(data, "documents", file_name, mime_type)
        return _document(stored)

    def add_photo(self, *sizes: bytes) -> list[dict[str, Any]]:
        """Store a photo as if a user had sent it: one file per size, smallest first, as
        Telegram keeps them; returns the message's `photo` (a list of `PhotoSize`)."""
        photo = []
        for number, data in enumerate(sizes, start=1):
            stored = self._store_file(data, "photos", None, "image/jpeg")
            photo.append(
                {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                 "width": 90 * number, "height": 60 * number, "file_size": len(data)}
            )  # fmt: skip
        return photo

    def message_update(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int | None = None,
        first_name: str = "Test",
        username: str | None = None,
        language_code: str | None = "en",
        message_thread_id: int | None = None,
        reply_to_message_id: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """An Update with a message from a user (not queued: see `push_message`)."""
        user = {"id": user_id or chat_id, "is_bot": False, "first_name": first_name}
        if user["id"] == chat_id:  # a private chat carries its user's names
            self._chat(chat_id).update(
                first_name=first_name, **({"username": username} if username else {})
            )
        user |= {
            k: v for k, v in {"username": username, "language_code": language_code}.items() if v
        }
        params: Params = {"message_thread_id": message_thread_id}
        if reply_to_message_id is not None:
            params["reply_parameters"] = {"message_id": reply_to_message_id}
        message = self._new_message(chat_id, params, sender=user, **fields)
        if text is not None:
            written(text)
            message["text"] = text
            if text.startswith("/"):
                command = text.split()[0]
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return {"update_id": self._take_update_id(), "message": message}

    def callback_query_update(
        self,
        chat_id: ChatId,
        message_id: int,
        data: str,
        *,
        user_id: int | None = None,
        first_name: str = "Test",
    ) -> dict[str, Any]:
        """An Update with a press on an inline button of a message the bot sent."""
        message = self.messages.get((chat_id, message_id))
        if message is None:
            raise KeyError(f"no message {message_id} in chat {chat_id}")
        sender_id = user_id or (chat_id if isinstance(chat_id, int) else 1)
        query = {
            "id": str(secrets.randbits(63)),
            "from": {"id": sender_id, "is_bot": False, "first_name": first_name},
            "message": dict(message),
            "chat_instance": str(abs(hash(chat_id))),
            "data": data,
        }
        return {"update_id": self._take_update_id(), "callback_query": query}

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an Update for getUpdates (an `update_id` is assigned when missing)."""
        if "update_id" not in update:
            update = {"update_id": self._take_update_id(), **update}
        self._next_update_id = max(self._next_update_id, update["update_id"] + 1)
        self.updates.append(update)
        self._new_update.set()
        return update

    def push_message(self, chat_id: int, text: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.push_update(self.message_update(chat_id, text, **kwargs))

    def push_callback_query(
        self, chat_id: ChatId, message_id: int, data: str, **kwargs: Any
    ) -> dict[str, Any]:
        return self.push_update(self.callback_query_update(chat_id, message_id, data, **kwargs))

    # ------------------------------------------------------------------ state

    def _take_update_id(self) -> int:
        update_id, self._next_update_id = self._next_update_id, self._next_update_id + 1
        return update_id

    def _chat(self, chat_id: ChatId) -> dict[str, Any]:
        if isinstance(chat_id, str):
            found = next(
                (c for c in self.chats.values() if f"@{c.get('username')}" == chat_id), None
            )
            if found is None:
                raise _bad_request("chat not found")
            return found
        if chat_id not in self.chats:
            if chat_id > 0:
                chat = {"id": chat_id, "type": "private", "first_name": f"User {chat_id}"}
            elif str(chat_id).startswith("-100"):
                chat = {"id": chat_id, "type": "supergroup", "title": f"Group {chat_id}"}
            else:
                chat = {"id": chat_id, "type": "group", "title": f"Group {chat_id}"}
            self.chats[chat_id] = chat
        return self.chats[chat_id]

    def _new_message(
        self,
        chat_id: ChatId,
        params: Params,
        *,
        sender: dict[str, Any] | None = None,
        **content: Any,
    ) -> dict[str, Any]:
        chat = self._chat(chat_id)
        chat_id = chat["id"]
        if sender is None and chat_id in self.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        thread_id = params.get("message_thread_id")
        if thread_id is not None and sender is None and (chat_id, thread_id) not in self.topics:
            raise _bad_request("message thread not found")
        message: dict[str, Any] = {
            "message_id": next(self._message_ids[chat_id]),
            "from": sender
            or {k: self.bot_user[k] for k in ("id", "is_bot", "first_name", "username")},
            "chat": chat,
            "date": int(time.time()),
        }
        if thread_id is not None:
            message |= {"message_thread_id": thread_id, "is_topic_message": True}
        if reply := params.get("reply_parameters"):
            target = self.messages.get((chat_id, reply["message_id"]))
            if target is None and not reply.get("allow_sending_without_reply"):
                raise _bad_request("message to be replied not found")
            if target is not None:
                message["reply_to_message"] = {
                    k: v for k, v in target.items() if k != "reply_to_message"
                }
        message |= {k: v for k, v in content.items() if v is not None}
        if "inline_keyboard" in (markup := params.get("reply_markup") or {}):
            message["reply_markup"] = markup
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def _store_file(
        self, data: bytes, folder: str, file_name: str | None, mime_type: str | None
    ) -> StoredFile:
        number = len(self.files) + 1
        suffix = f".{file_name.rsplit('.', 1)[-1]}" if file_name and "." in file_name else ""
        stored = StoredFile(
            file_id=f"BQACAgQAAx{secrets.token_urlsafe(24)}",
            file_unique_id=f"AgAD{secrets.token_urlsafe(8)}",
            file_path=f"{folder}/file_{number}{suffix}",
            data=data,
            file_name=file_name,
            mime_type=mime_type,
        )
        self.files[stored.file_id] = stored
        return stored

    def _input_file(self, value: UploadedFile | str, folder: str) -> StoredFile:
        """The file an InputFile-or-String parameter names: an upload, a file_id or a URL."""
        if isinstance(value, UploadedFile):
            return self._store_file(value.data, folder, value.filename, value.content_type)
        if value in self.files:
            return self.files[value]
        if value.startswith(("http://", "https://")):
            name = urlsplit(value).path.rsplit("/", 1)[-1] or None
            return self._store_file(b"", folder, name, None)
        raise _bad_request("wrong file identifier/HTTP URL specified")

    def _note_sent(self, chat_id: ChatId) -> None:
        now = time.monotonic()
        self._sent_at.append(now)
        while now - self._sent_at[0] > 1:
            self._sent_at.popleft()
        if len(self._sent_at) > 30:
            self.rate_violations.append(
                RateViolation("over 30 messages/s", None, len(self._sent_at), now)
            )
        chat_times = self._sent_at_by_chat[chat_id]
        chat_times.append(now)
        private = isinstance(chat_id, int) and chat_id > 0
        window, limit, rule = (
            (1, 1, "over 1 message/s in a private chat")
            if private
            else (60, 20, "over 20 messages/min in a group")
        )
        while now - chat_times[0] > window:
            chat_times.popleft()
        if len(chat_times) > limit:
            self.rate_violations.append(RateViolation(rule, chat_id, len(chat_times), now))

    # ------------------------------------------------------------------ methods

    async def _get_me(self, params: Params) -> Any:
        return self.bot_user

    async def _send_message(self, params: Params) -> Any:
        text = _checked_text(params["text"], params.get("parse_mode"), limit=4096, what="text")
        _check_markup(params.get("reply_markup"))
        return self._new_message(params["chat_id"], params, text=text)

    async def _send_document(self, params: Params) -> Any:
        caption = _checked_caption(params)
        _check_markup(params.get("reply_markup"))
        stored = self._input_file(params["document"], "documents")
        return self._new_message(
            params["chat_id"], params, document=_document(stored), caption=caption
        )

    async def _send_photo(self, params: Params) -> Any:
        caption = _checked_caption(params)
        _check_markup(params.get("reply_markup"))
        stored = self._input_file(params["photo"], "photos")
        size = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                "width": 320, "height": 320, "file_size": len(stored.data)}  # fmt: skip
        return self._new_message(params["chat_id"], params, photo=[size], caption=caption)

    def _editable(self, params: Params) -> dict[str, Any] | None:
        """The message an edit targets; None for inline messages, which answer True."""
        if "inline_message_id" in params:
            return None
        if "chat_id" not in params or "message_id" not in params:
            raise _bad_request("message identifier is not specified", violation=True)
        message = self.messages.get((self._chat(params["chat_id"])["id"], params["message_id"]))
        if message is None:
            raise _bad_request("message to edit not found")
        if message["from"]["id"] != self.bot_user["id"]:
            raise _bad_request("message can't be edited")
        return message

    @staticmethod
    def _apply_edit(message: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        new = {k: v for k, v in message.items() if k not in ("reply_markup", "edit_date")}
        new |= {k: v for k, v in changes.items() if v}
        if {k: new.get(k) for k in changes} == {k: message.get(k) for k in changes}:
            raise _bad_request(
                "message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message"
            )
        message.clear()
        message.update(new, edit_date=int(time.time()))
        return message

    async def _edit_message_text(self, params: Params) -> Any:
        if "text" not in params:
            raise _bad_request("text must be specified", violation=True)
        text = _checked_text(params["text"], params.get("parse_mode"), limit=4096, what="text")
        markup = params.get("reply_markup")
        _check_markup(markup)
        message = self._editable(params)
        if message is None:
            return True
        if "text" not in message:
            raise _bad_request("there is no text in the message to edit")
        return self._apply_edit(message, {"text": text, "reply_markup": markup})

    async def _edit_message_reply_markup(self, params: Params) -> Any:
        markup = params.get("reply_markup")
        _check_markup(markup)
        message = self._editable(params)
        if message is None:
            return True
        return self._apply_edit(message, {"reply_markup": markup})

    async def _answer_callback_query(self, params: Params) -> Any:
        if len(params.get("text", "")) > 200:
            raise _bad_request("MESSAGE_TOO_LONG", violation=True)
        return True

    async def _set_webhook(self, params: Params) -> Any:
        url = params["url"]
        if url:
            parts = urlsplit(url)
            if parts.scheme != "https":
                raise _bad_request(
                    "bad webhook: An HTTPS URL must be provided for webhook", violation=True
                )
            if (parts.port or 443) not in (80, 88, 443, 8443):
                raise _bad_request(
                    "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
                    violation=True,
                )
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN.fullmatch(secret):
            raise _bad_request("secret token contains unallowed characters", violation=True)
        if params.get("drop_pending_updates"):
            self.updates.clear()
        self.webhook = {"url": url} | {
            k: params[k]
            for k in ("secret_token", "allowed_updates", "max_connections")
            if k in params
        }
        return True

    async def _delete_webhook(self, params: Params) -> Any:
        if params.get("drop_pending_updates"):
            self.updates.clear()
        self.webhook = {"url": ""}
        return True

    async def _get_webhook_info(self, params: Params) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook["url"],
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }
        if self.webhook["url"]:
            info["max_connections"] = self.webhook.get("max_connections", 40)
            if "allowed_updates" in self.webhook:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    async def _get_updates(self, params: Params) -> Any:
        if self.webhook["url"]:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset, limit = params.get("offset", 0), params.get("limit", 100)
        if offset < 0:
            self.updates[:] = self.updates[offset:]
        elif offset:
            self.updates[:] = [u for u in self.updates if u["update_id"] >= offset]
        deadline = time.monotonic() + params.get("timeout", 0)
        while not self.updates and not self._closing and time.monotonic() < deadline:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return self.updates[:limit]

    async def _create_forum_topic(self, params: Params) -> Any:
        chat = self._chat(params["chat_id"])
        if not chat.get("is_forum"):
            raise _bad_request("the chat is not a forum")
        if not 1 <= len(params["name"]) <= 128:
            raise _bad_request("TOPIC_NAME_INVALID", violation=True)
        color = params.get("icon_color", 7322096)
        if color not in TOPIC_COLORS:
            raise _bad_request("TOPIC_COLOR_INVALID", violation=True)
        thread_id = next(self._message_ids[chat["id"]])  # the id of the topic's service message
        self.topics[(chat["id"], thread_id)] = params["name"]
        topic = {"message_thread_id": thread_id, "name": params["name"], "icon_color": color}
        if "icon_custom_emoji_id" in params:
            topic["icon_custom_emoji_id"] = params["icon_custom_emoji_id"]
        return topic

    def _topic(self, params: Params) -> tuple[ChatId, int]:
        """The forum topic a call names; Bad Request for a chat with no such topic."""
        chat = self._chat(params["chat_id"])
        if not chat.get("is_forum"):
            raise _bad_request("the chat is not a forum")
        key = (chat["id"], params["message_thread_id"])
        if key not in self.topics:
            raise _bad_request("message thread not found")
        return key

    async def _edit_forum_topic(self, params: Params) -> Any:
        key = self._topic(params)
        name = params.get("name") or self.topics[key]  # empty or missing: kept
        if len(name) > 128:
            raise _bad_request("TOPIC_NAME_INVALID", violation=True)
        if name == self.topics[key] and "icon_custom_emoji_id" not in params:
            raise _bad_request("TOPIC_NOT_MODIFIED")
        self.topics[key] = name
        return True

    async def _close_forum_topic(self, params: Params) -> Any:
        key = self._topic(params)
        if key in self.closed_topics:
            raise _bad_request("TOPIC_NOT_MODIFIED")
        self.closed_topics.add(key)
        return True

    async def _reopen_forum_topic(self, params: Params) -> Any:
        key = self._topic(params)
        if key not in self.closed_topics:
            raise _bad_request("TOPIC_NOT_MODIFIED")
        self.closed_topics.discard(key)
        return True

    async def _get_file(self, params: Params) -> Any:
        stored = self.files.get(params["file_id"])
        if stored is None:
            raise _bad_request("invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    async def _set_my_commands(self, params: Params) -> Any:
        for command in params["commands"]:
            if not _COMMAND.fullmatch(command["command"]):
                raise _bad_request("BOT_COMMAND_INVALID", violation=True)
            if not 1 <= len(command["description"]) <= 256:
                raise _bad_request("command description must be 1-256 characters", violation=True)
        scope = params.get("scope", {"type": "default"})["type"]
        self.commands[(scope, params.get("language_code", ""))] = params["commands"]
        return True

    async def _delete_message(self, params: Params) -> Any:
        key = (self._chat(params["chat_id"])["id"], params["message_id"])
        if self.messages.pop(key, None) is None:
            raise _bad_request("message to delete not found")
        return True

    async def _send_chat_action(self, params: Params) -> Any:
        if params["action"] not in CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request", violation=True)
        self._chat(params["chat_id"])
        return True


# ---------------------------------------------------------------------- request parsing and rules


async def _read_params(request: web.Request) -> Params:
    """Parameters from the query string and a JSON, url-encoded or multipart body."""
    params: Params = dict(request.query)
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise _bad_request("can't parse JSON object", violation=True) from None
        if isinstance(body, dict):
            params.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for name, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                params[name] = UploadedFile(value.filename, value.content_type, value.file.read())
            else:
                params[name] = value
    return params


def _document(stored: StoredFile) -> dict[str, Any]:
    document = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                "file_size": len(stored.data)}  # fmt: skip
    if stored.file_name:
        document["file_name"] = stored.file_name
    if stored.mime_type:
        document["mime_type"] = stored.mime_type
    return document


def _checked_caption(params: Params) -> str | None:
    if "caption" not in params:
        return None
    return _checked_text(params["caption"], params.get("parse_mode"), limit=1024, what="caption")


def _checked_text(text: str, parse_mode: str | None, *, limit: int, what: str) -> str:
    """The text as users see it, after the checks Telegram makes on its entities and length."""
    mode = (parse_mode or "").lower()
    if mode == "html":
        if problem := _html_problem(text):
            raise _bad_request(f"can't parse entities: {problem}", violation=True)
        text = html.unescape(_HTML_TAG.sub("", text))
    elif mode == "markdownv2":
        if problem := _markdown_v2_problem(text):
            raise _bad_request(f"can't parse entities: {problem}", violation=True)
        text = re.sub(r"\\(.)", r"\1", re.sub(r"(?<!\\)[*_~|`]", "", text))
    if not text.strip() and what == "text":
        raise _bad_request("message text is empty", violation=True)
    if len(text) > limit:
        raise _bad_request(
            f"message {'is' if what == 'text' else what + ' is'} too long", violation=True
        )
    return text


def _html_problem(text: str) -> str | None:
    """Why Telegram would refuse `text` in HTML parse mode (a practical subset of its rules)."""
    open_tags: list[str] = []
    position = 0
    for match in _HTML_TAG.finditer(text):
        if "<" in text[position : match.start()]:
            return f"Unsupported start tag at byte offset {text.index('<', position)}"
        closing, name = match.group(1), match.group(2).lower()
        if name not in HTML_TAGS:
            return f'Unsupported start tag "{name}" at byte offset {match.start()}'
        if not closing:
            open_tags.append(name)
        elif not open_tags or open_tags.pop() != name:
            return f'Unmatched end tag at byte offset {match.start()}, expected "</{name}>"'
        position = match.end()
    if "<" in text[position:]:
        return f"Unsupported start tag at byte offset {text.index('<', position)}"
    if open_tags:
        return f'Can\'t find end tag corresponding to start tag "{open_tags[-1]}"'
    return None


def _markdown_v2_problem(text: str) -> str | None:
    """The first reserved character left unescaped outside code and link targets."""
    escaped = in_code = in_url = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "`":
            in_code = not in_code
        elif in_url:
            in_url = char != ")"
        elif not in_code and char == "(" and text[i - 1 : i] == "]":
            in_url = True
        elif not in_code and char in _MARKDOWN_V2_RESERVED:
            return f"Character '{char}' is reserved and must be escaped with the preceding '\\'"
    return None


def _check_markup(markup: dict[str, Any] | None) -> None:
    """Rules on inline keyboards the type list cannot express."""
    for row in (markup or {}).get("inline_keyboard", []):
        for button in row:
            if len(button) == 1:
                raise _bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the "
                    "inline keyboard",
                    violation=True,
                )
            if not 1 <= len(button.get("callback_data", "x").encode()) <= 64:
                raise _bad_request("BUTTON_DATA_INVALID", violation=True)
