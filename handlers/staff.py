"""The staff desk's edges: fetching files staff send from Telegram, and the customers'
download page `/d/<token>` for files delivered over WhatsApp."""

from __future__ import annotations

import html
import ipaddress
import logging
from typing import Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from telegram.error import BadRequest, TelegramError

from bot.desk import Desk, Download, DownloadState, FileGone, Refused
from bot.i18n import RTL
from handlers.web import DEPS
from storage.db import transaction

log = logging.getLogger(__name__)

DESK = web.AppKey("desk", Desk)
_SECURITY = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
}


class TelegramFiles:
    """Fetches files staff send, through the Bot API's getFile and its file URL."""

    def __init__(self, bot: Any) -> None:
        self._bot = bot

    async def fetch(self, file_id: str, *, limit: int) -> bytes:
        try:
            file = await self._bot.get_file(file_id)
            if file.file_size is not None and file.file_size > limit:
                raise Refused(f"That file is over {limit // (1024 * 1024)} MB; nothing was sent.")
            data = bytes(await file.download_as_bytearray())
        except BadRequest as exc:  # Telegram does not know that file (any more)
            raise FileGone(f"telegram: {exc.message[:100]}") from None
        except TelegramError as exc:
            # Raised inside the inbox transaction: the message is retried later.
            raise RuntimeError(f"telegram file download failed: {type(exc).__name__}") from None
        if len(data) > limit:
            raise Refused(f"That file is over {limit // (1024 * 1024)} MB; nothing was sent.")
        return data


def _client(request: web.Request) -> str:
    """The caller's network, not their address: IPv4 /24, IPv6 /48."""
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _page(found: Download, *, ready: bool) -> str:
    direction = "rtl" if found.language in RTL else "ltr"
    if ready:
        body = (
            f"<p>{html.escape(found.body)}</p>"
            f'<form method="post"><button type="submit">{html.escape(found.button)}</button></form>'
        )
    else:
        body = f"<p>{html.escape(found.gone)}</p>"
    return (
        f'<!doctype html><html lang="{found.language}" dir="{direction}"><head>'
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex,nofollow">'
        f"<title>{html.escape(found.title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32em;margin:3em auto;padding:0 1em}"
        "button{font-size:1.2em;padding:.6em 1.4em}</style></head>"
        f"<body><h1>{html.escape(found.title)}</h1>{body}</body></html>"
    )


def _not_found() -> web.Response:
    return web.Response(status=404, text="Not found", headers=_SECURITY)


async def download_page(request: web.Request) -> web.Response:
    """GET /d/<token>: a page with a download button; it counts nothing (link previews and
    scanners fetch pages, they do not post forms)."""
    deps, desk = request.app[DEPS], request.app[DESK]
    token = request.match_info["token"]
    try:
        async with transaction(deps.sessions) as session:
            found = await desk.download(session, token, deps.now())
    except (SQLAlchemyError, OSError):
        log.exception("download page: storage unavailable")
        return web.Response(status=503, text="Unavailable", headers=_SECURITY)
    if found.state is DownloadState.NOT_FOUND:
        return _not_found()
    ready = found.state is DownloadState.READY
    return web.Response(
        status=200 if ready else 410,
        text=_page(found, ready=ready),
        content_type="text/html",
        headers=_SECURITY,
    )


async def download(request: web.Request) -> web.Response:
    """POST /d/<token>: the file, counted and recorded, while the link is valid."""
    deps, desk = request.app[DEPS], request.app[DESK]
    token = request.match_info["token"]
    try:
        async with transaction(deps.sessions) as session:
            found = await desk.download(
                session,
                token,
                deps.now(),
                take=True,
                client=_client(request),
                user_agent=request.headers.get("User-Agent", ""),
            )
    except (SQLAlchemyError, OSError):
        log.exception("download: storage unavailable")
        return web.Response(status=503, text="Unavailable", headers=_SECURITY)
    if found.state is DownloadState.NOT_FOUND:
        return _not_found()
    if found.state is DownloadState.GONE:
        return web.Response(
            status=410, text=_page(found, ready=False), content_type="text/html", headers=_SECURITY
        )
    ascii_name = found.name.encode("ascii", "replace").decode().replace("?", "_")
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(found.name)}"
    return web.Response(
        body=found.data,
        content_type=found.content_type.split(";")[0],
        headers={**_SECURITY, "Content-Disposition": disposition},
    )


def routes() -> list[web.RouteDef]:
    return [web.get("/d/{token}", download_page), web.post("/d/{token}", download)]
