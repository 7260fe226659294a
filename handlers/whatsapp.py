"""WhatsApp through Twilio: the signed webhooks in, the Messages REST API out."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from sqlalchemy.exc import SQLAlchemyError
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from bot.deps import Deps
from bot.desk import FileGone
from bot.logs import mask_phone
from bot.messages import Inbound, Media
from bot.outbox import SendError
from bot.settings import Settings
from handlers.web import DEPS
from storage import inbound as inbound_store
from storage.enums import Channel

log = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
_SID = re.compile(r"^[A-Z]{2}[0-9a-fA-F]{32}$")
_ADDRESS = re.compile(r"^whatsapp:\+[1-9]\d{6,14}$")
_MAX_MEDIA = 10

_STATUS = re.compile(r"^[a-z_]{1,24}$")  # queued, sent, delivered, read, failed, …


class BadPayload(ValueError):
    """The request is well signed but not a message we can understand."""


def parse(form: Mapping[str, str], *, tenant: str | None, received_at: Any) -> Inbound:
    """Turn Twilio's inbound message form into an Inbound, or raise BadPayload."""
    sid = form.get("MessageSid", "")
    sender = form.get("From", "")
    if not _SID.match(sid):
        raise BadPayload("MessageSid missing or malformed")
    if not _ADDRESS.match(sender):
        raise BadPayload("From is not a whatsapp:+E164 address")
    if not _ADDRESS.match(form.get("To", "")):
        raise BadPayload("To is not a whatsapp:+E164 address")
    try:
        count = int(form.get("NumMedia", "0") or "0")
    except ValueError:
        raise BadPayload("NumMedia is not a number") from None
    if not 0 <= count <= _MAX_MEDIA:
        raise BadPayload("NumMedia out of range")
    media = []
    for index in range(count):
        url = form.get(f"MediaUrl{index}")
        if not url:
            raise BadPayload(f"MediaUrl{index} missing")
        media.append(Media(url=url, content_type=form.get(f"MediaContentType{index}")))
    return Inbound(
        channel=Channel.WHATSAPP,
        provider_id=sid,
        sender=sender,
        tenant=tenant,
        to=form["To"],
        text=form.get("Body", ""),
        media=tuple(media),
        display_name=form.get("ProfileName") or None,
        received_at=received_at,
    )


def _form_dict(form: MultiDictProxy[Any]) -> dict[str, Any]:
    """Form fields as Twilio signs them: repeated keys become lists, files are refused."""
    out: dict[str, Any] = {}
    for key in form:
        values = form.getall(key)
        if not all(isinstance(value, str) for value in values):
            raise BadPayload("file uploads are not accepted")
        out[key] = values if len(values) > 1 else values[0]
    return out


def signed_url(request: web.Request, settings: Settings) -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL + path + query (the proxy may rewrite the host)."""
    base = settings.public_url
    if base is None:
        return str(request.url)
    return base + request.path_qs


def _verify(request: web.Request, deps: Deps, form: dict[str, Any]) -> bool:
    token = deps.settings.twilio_auth_token
    signature = request.headers.get("X-Twilio-Signature", "")
    if token is None or not signature:
        return False
    validator = RequestValidator(token.get_secret_value())
    # A MultiDict: a repeated field is signed value by value, as Twilio signs it.
    fields: MultiDict[str] = MultiDict()
    for key, value in form.items():
        for one in value if isinstance(value, list) else [value]:
            fields.add(key, one)
    return bool(validator.validate(signed_url(request, deps.settings), fields, signature))


def _answer(status: int = 200, reason: str | None = None) -> web.Response:
    if status == 200:
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")
    return web.json_response({"error": reason}, status=status)


async def _read_form(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadPayload("expected application/x-www-form-urlencoded")
    try:
        return _form_dict(await request.post())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadPayload("unreadable form body") from exc


async def _store(deps: Deps, **fields: Any) -> int | None:
    return await inbound_store.store_now(
        deps.engine, journal=deps.journal, now=deps.now(), **fields
    )


async def receive_message(request: web.Request) -> web.Response:
    """POST /webhooks/whatsapp: verify, store once, acknowledge; replies go via the outbox."""
    deps: Deps = request.app[DEPS]
    started = time.perf_counter()
    result, response = await _receive_message(request, deps)
    deps.metrics.inbound.labels(channel="whatsapp", result=result).inc()
    deps.metrics.webhook_latency.labels(channel="whatsapp").observe(time.perf_counter() - started)
    return response


async def _receive_message(request: web.Request, deps: Deps) -> tuple[str, web.Response]:
    if not deps.settings.whatsapp_enabled:
        return "disabled", _answer(404, "the WhatsApp channel is not configured")
    try:
        form = await _read_form(request)
    except BadPayload as exc:
        return "invalid", _answer(400, str(exc))
    if not _verify(request, deps, form):
        log.warning("whatsapp webhook: bad or missing X-Twilio-Signature")
        return "forbidden", _answer(403, "invalid X-Twilio-Signature")
    flat = {key: value if isinstance(value, str) else value[0] for key, value in form.items()}
    tenant = deps.tenants.for_whatsapp_number(flat.get("To", ""))
    try:
        message = parse(flat, tenant=tenant.slug if tenant else None, received_at=deps.now())
    except BadPayload as exc:
        return "invalid", _answer(400, str(exc))
    if tenant is None:
        log.warning("whatsapp message %s to a number no tenant claims", message.provider_id)
        return "unknown_number", _answer(422, "no tenant claims this To number")
    try:
        row_id = await _store(
            deps,
            channel=Channel.WHATSAPP,
            provider_id=message.provider_id,
            kind="message",
            sender=message.sender,
            tenant=tenant.slug,
            payload=form,
        )
    except (SQLAlchemyError, OSError) as exc:  # one line, not a traceback per webhook
        log.warning("whatsapp message %s not stored: %s", message.provider_id, type(exc).__name__)
        return "unavailable", _answer(503, "storage unavailable, retry later")
    if row_id is None:
        log.info("whatsapp message %s is a repeat; not processed again", message.provider_id)
        return "duplicate", _answer()
    log.info(
        "whatsapp message %s from %s stored as inbound %s",
        message.provider_id,
        mask_phone(message.sender),
        row_id,
    )
    deps.wake_inbox()
    return "accepted", _answer()


async def receive_status(request: web.Request) -> web.Response:
    """POST /webhooks/whatsapp/status: a delivery status for a message we sent."""
    deps: Deps = request.app[DEPS]
    if not deps.settings.whatsapp_enabled:
        return _answer(404, "the WhatsApp channel is not configured")
    try:
        form = await _read_form(request)
    except BadPayload as exc:
        return _answer(400, str(exc))
    if not _verify(request, deps, form):
        log.warning("whatsapp status webhook: bad or missing X-Twilio-Signature")
        return _answer(403, "invalid X-Twilio-Signature")
    sid = form.get("MessageSid")
    status = form.get("MessageStatus")
    if not isinstance(sid, str) or not _SID.match(sid):
        return _answer(400, "MessageSid missing or malformed")
    if not isinstance(status, str) or not _STATUS.match(status):
        return _answer(400, "MessageStatus missing or malformed")
    try:
        await _store(
            deps,
            channel=Channel.WHATSAPP,
            provider_id=f"{sid}:{status}"[:64],
            kind="status",
            sender=f"status:{sid}",
            tenant=None,
            payload=form,
        )
    except (SQLAlchemyError, OSError) as exc:
        log.warning("whatsapp status for %s not stored: %s", sid, type(exc).__name__)
        return _answer(503, "storage unavailable, retry later")
    deps.wake_inbox()
    return _answer()


def rebase(url: str, base_url: str) -> str:
    """A *.twilio.com URL moved onto TWILIO_API_BASE_URL (path and query kept)."""
    base, parts = urlsplit(base_url), urlsplit(url)
    path = base.path.rstrip("/") + parts.path
    return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))


class TwilioHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """twilio's own async client, pointed at TWILIO_API_BASE_URL instead of *.twilio.com."""

    def __init__(self, base_url: str, *, timeout: float = 15.0) -> None:
        super().__init__(timeout=timeout, logger=log)
        self._base_url = base_url

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (twilio's signature)
        allow_redirects: bool = False,
    ) -> Response:
        if urlsplit(url).netloc.endswith("twilio.com"):
            url = rebase(url, self._base_url)
        if auth is not None:  # the same header, without aiohttp 3.14's deprecated auth=
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        return await super().request(
            method, url, params, data, headers, None, timeout, allow_redirects
        )

    def log_request(self, kwargs: dict[str, Any]) -> None:
        """Say nothing: twilio's own logging would print message bodies and numbers."""

    def log_response(self, status_code: int, response: Any) -> None:
        """Say nothing (see log_request)."""


class MediaGone(FileGone):
    """The provider says the file is not there (4xx): retrying will not bring it back."""


class TwilioMedia:
    """Downloads a WhatsApp message's media (its MediaUrlN) with the account's credentials.

    Only Twilio's own hosts are fetched (the URL came in a signed webhook, but a fetcher
    that follows any URL is an SSRF waiting to happen); they go to TWILIO_API_BASE_URL,
    as the REST calls do. Twilio answers with a redirect to short-lived storage, which is
    followed without the credentials.
    """

    def __init__(self, base_url: str, account_sid: str, auth_token: str) -> None:
        self._base_url = base_url
        self._auth = aiohttp.encode_basic_auth(account_sid, auth_token)

    def _url(self, url: str) -> str:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme != "https" or not (host == "twilio.com" or host.endswith(".twilio.com")):
            raise MediaGone("not a Twilio media URL")
        return rebase(url, self._base_url)

    async def fetch(self, url: str, *, limit: int) -> bytes:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(
                self._url(url), headers={"Authorization": self._auth}, allow_redirects=False
            ) as response,
        ):
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location", "")
                return await self._read(http.get(location), limit)
            return await self._read_response(response, limit)

    async def _read(self, request: Any, limit: int) -> bytes:
        async with request as response:
            return await self._read_response(response, limit)

    @staticmethod
    async def _read_response(response: aiohttp.ClientResponse, limit: int) -> bytes:
        if 400 <= response.status < 500 and response.status != 429:
            raise MediaGone(f"twilio media answered {response.status}")
        if response.status != 200:  # 5xx, 429: the inbox tries the message again later
            raise RuntimeError(f"twilio media answered {response.status}")
        data = await response.content.read(limit + 1)
        if len(data) > limit:
            raise MediaGone(f"media over {limit} bytes")
        return data


class WhatsAppSender:
    """Sends outbox payloads through twilio's Messages API."""

    def __init__(self, settings: Settings) -> None:
        assert settings.twilio_account_sid and settings.twilio_auth_token
        self._http = TwilioHttpClient(settings.twilio_base)
        self._client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=self._http,
        )
        public = settings.public_url
        self._status_callback = f"{public}/webhooks/whatsapp/status" if public else None

    async def send(self, recipient: str, payload: Mapping[str, Any]) -> str | None:
        kwargs: dict[str, Any] = {"to": recipient, "from_": payload["from"]}
        if payload.get("content_sid"):
            kwargs["content_sid"] = payload["content_sid"]
            if payload.get("content_variables"):
                kwargs["content_variables"] = payload["content_variables"]
        else:
            kwargs["body"] = payload.get("text", "")
            if payload.get("media_url"):
                kwargs["media_url"] = [payload["media_url"]]
        if self._status_callback:
            kwargs["status_callback"] = self._status_callback
        try:
            message = await self._client.messages.create_async(**kwargs)
        except TwilioRestException as exc:
            retryable = exc.status == 429 or exc.status >= 500
            raise SendError(f"twilio {exc.status} code {exc.code}", retryable=retryable) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"network: {type(exc).__name__}", retryable=True) from None
        return str(message.sid)

    async def find_sent(
        self, recipient: str, payload: Mapping[str, Any], since: datetime
    ) -> str | None:
        """The sid of this message if Twilio created it after `since` (a crash mid-send).

        Safe because the outbox sends one message per recipient at a time: nothing else to
        this customer can have been created since the interrupted attempt began.
        """
        try:
            recent = await self._client.messages.list_async(
                to=recipient, from_=payload["from"], limit=20
            )
        except (TwilioRestException, aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"twilio lookup: {type(exc).__name__}", retryable=True) from None
        for message in recent:
            created = message.date_created
            if created is None or created < since.replace(microsecond=0):
                continue
            if payload.get("content_sid") or message.body == payload.get("text", ""):
                return str(message.sid)
        return None

    async def close(self) -> None:
        await self._http.close()
