"""The admin pages: server-rendered HTML (Jinja2) under /admin, behind a sign-in.

Every page needs a session (else 302 to the login page); every POST needs the session's
CSRF token (else 403); acting on tickets, revealing contacts, the sandbox and the webhook
settings need the `admin` role (viewers get 403). Every response carries a strict CSP,
frame denial, no-store, and HSTS when served over HTTPS.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from cryptography.exceptions import InvalidTag
from sqlmodel import select

from bot import admin_reports, admin_service, sandbox
from bot.api_models import (
    STATUS_VIEWS,
    ParamError,
    admin_filter,
    choice,
    cursor_of,
    encode_cursor,
    integer,
)
from bot.deps import Deps
from bot.logs import mask_address
from bot.mail import MAIL_KEY_PURPOSE
from bot.sealed import derive_key, unseal
from bot.tenants import Tenant
from bot.webhooks_out import webhook_secret
from handlers import staff
from handlers.web import DEPS
from storage import admin_queries as q
from storage.admin_models import SandboxChat
from storage.db import transaction
from storage.desk_models import DeskFile
from storage.enums import CLOSED_STATUSES, Channel, RequestType, TicketStatus
from storage.models import Ticket

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
TEMPLATES = web.AppKey("admin_templates", jinja2.Environment)
CURRENT = web.RequestKey("admin_current", admin_service.Current)
PAGE_SIZE = 50
SANDBOX_WAIT = 10.0
LOGIN_COOKIE = "rd_login"
PUBLIC_PATHS = ("/admin/login", "/admin/static/")

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
DONE = {
    "assign": "Assignment saved.",
    "note": "Note added.",
    "extend": "Deadline extended.",
    "resolve": "Ticket resolved; the requester is told.",
    "reject": "Ticket rejected; the requester is told why.",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- plumbing ---------------------------------------------------------------------------------


def _deps(request: web.Request) -> Deps:
    return request.config_dict[DEPS]


def is_https(request: web.Request) -> bool:
    """Reached over HTTPS: directly, or through a proxy that says so (X-Forwarded-Proto).

    Only the request itself decides: a Secure cookie set on a plain-HTTP page would never
    come back, and a client that lies about the scheme only locks itself out."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def session_cookie(secure: bool) -> str:
    # `__Host-` cookies must be Secure with Path=/ and no Domain: no subdomain can set one.
    return "__Host-rd_session" if secure else "rd_session"


def client_ip(request: web.Request) -> str:
    """The address that login throttling and the audit record: the peer's, unless the peer
    is our reverse proxy (loopback or private), then the X-Forwarded-For entry it added.

    A client reaching the service directly cannot choose its address by sending the header."""
    peer = request.remote or ""
    if _is_proxy(peer):
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if forwarded:
            return forwarded[:64]
    return (peer or "unknown")[:64]


def _is_proxy(peer: str) -> bool:
    """A loopback or private peer: the reverse proxy in front (README, "Deploying")."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_private


def _current(request: web.Request) -> admin_service.Current:
    current: admin_service.Current = request[CURRENT]
    return current


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer; refusals and misses as a readable page."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status in (403, 404, 405):
            response = render(
                request,
                "error.html",
                status=exc.status,
                message=(exc.text or exc.reason).removeprefix(f"{exc.status}: ").strip(),
            )
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        else:
            _secure(request, exc)
            raise
    _secure(request, response)
    return response


def _secure(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:
        return
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if not request.path.startswith("/admin/static/"):
        headers.setdefault("Cache-Control", "no-store")
    if is_https(request):
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


@web.middleware
async def require_login(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sign-in for every page but the login form; the CSRF token for every POST."""
    if request.path.startswith(PUBLIC_PATHS):
        return await handler(request)
    deps = _deps(request)
    token = request.cookies.get(session_cookie(is_https(request)), "")
    current = await admin_service.current_user(deps.sessions, token, now=deps.now())
    if current is None:
        target = request.path_qs if request.method == "GET" else "/admin/tickets"
        raise web.HTTPFound("/admin/login?" + urlencode({"next": target}))
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if not _same_origin(request):
            raise _forbidden("cross-site request refused")
        form = await request.post()
        given = form.get("csrf")
        if not isinstance(given, str) or not secrets.compare_digest(given, current.csrf):
            raise _forbidden("missing or wrong CSRF token: reload the page and try again")
    request[CURRENT] = current
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("X-Forwarded-Host") or request.host
    return origin.split("://", 1)[-1].rstrip("/") == host


def _forbidden(reason: str) -> web.HTTPForbidden:
    return web.HTTPForbidden(text=reason, content_type="text/plain")


def admin_only(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not _current(request).is_admin:
            return render(request, "error.html", status=403, message="Only admins may do that.")
        return await handler(request)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def render(request: web.Request, name: str, *, status: int = 200, **context: Any) -> web.Response:
    env = request.config_dict[TEMPLATES]
    deps = _deps(request)
    current = request.get(CURRENT)
    html = env.get_template(name).render(
        me=current,
        csrf=current.csrf if current is not None else "",
        tenants=list(deps.tenants),
        path=request.path,
        status_code=status,
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _params(request: web.Request) -> dict[str, str]:
    return {key: request.query.get(key, "") for key in request.query}


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _tenant_of(deps: Deps, ticket: Ticket) -> Tenant | None:
    return deps.tenants.by_slug(ticket.tenant) if ticket.tenant in deps.tenants else None


# --- template helpers -------------------------------------------------------------------------


def local_time(moment: datetime | None, tenant: Tenant | None) -> str:
    if moment is None:
        return "—"
    zone = tenant.zone if tenant is not None else UTC
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def due_state(ticket: Ticket, now: datetime) -> tuple[str, str]:
    """(css class, words) for a deadline: how close it is, never colour alone."""
    if ticket.status in CLOSED_STATUSES:
        return "closed", ticket.status.replace("_", " ")
    if ticket.due_at is None:
        return "nodue", "clock not started"
    left = ticket.due_at - now
    if left < timedelta(0):
        return "overdue", f"overdue by {_span(-left)}"
    if left < timedelta(days=1):
        return "today", f"due in {_span(left)}"
    if left < timedelta(days=3):
        return "soon", f"due in {_span(left)}"
    return "ok", f"due in {_span(left)}"


def _span(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    if hours < 1:
        return f"{max(1, int(delta.total_seconds() // 60))} min"
    if hours < 48:
        return f"{hours} h"
    return f"{hours // 24} days"


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        STATUSES=list(TicketStatus),
        TYPES=list(RequestType),
        CHANNELS=list(Channel),
        STATUS_VIEWS=STATUS_VIEWS,
        mask=mask_address,
    )
    env.filters["words"] = lambda value: str(value).replace("_", " ")
    return env


# --- sign-in ----------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/admin") and not value.startswith("//") and "\\" not in value:
        return value
    return "/admin/tickets"


async def login_page(request: web.Request) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        next=_safe_next(request.query.get("next")),
        login_csrf=token,
        error=None,
    )
    _login_cookie(request, response, token)
    return response


def _login_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        path="/admin/login",
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
        max_age=3600,
    )


async def login(request: web.Request) -> web.StreamResponse:
    """POST /admin/login: login-CSRF double submit, throttle, argon2, then a fresh session."""
    deps = _deps(request)
    form = await _form(request)
    target = _safe_next(form.get("next"))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    given = form.get("login_csrf", "")
    if not cookie or not given or not secrets.compare_digest(cookie, given):
        return _login_again(request, target, "Your login form expired. Please try again.", 403)
    result = await admin_service.sign_in(
        deps.sessions,
        email=form.get("email", ""),
        password=form.get("password", ""),
        ip=client_ip(request),
        now=deps.now(),
    )
    if isinstance(result, admin_service.Refused):
        return _login_again(request, target, result.reason, 429 if result.throttled else 401)
    secure = is_https(request)
    response = _see_other(target)
    response.set_cookie(
        session_cookie(secure),
        result.token,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=secure,
        max_age=int(admin_service.SESSION_MAX.total_seconds()),
    )
    response.del_cookie(LOGIN_COOKIE, path="/admin/login")
    return response


def _see_other(location: str) -> web.Response:
    """A 303 to return (not raise) when it carries cookies."""
    return web.Response(status=303, headers={"Location": location})


def _login_again(request: web.Request, target: str, error: str, status: int) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request, "login.html", status=status, next=target, login_csrf=token, error=error
    )
    _login_cookie(request, response, token)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    deps = _deps(request)
    await admin_service.sign_out(deps.sessions, _current(request).token_hash)
    response = _see_other("/admin/login")
    response.del_cookie(session_cookie(is_https(request)), path="/")
    return response


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin/tickets")


# --- the ticket list --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    """One line of the ticket list, as the template reads it. Attributes, not a dict: Jinja
    looks a name up as an attribute first, and a dict's miss raised (and caught) an
    exception for every field of every row."""

    t: Ticket
    tenant: str
    due: str
    due_css: str
    due_words: str
    received: str


async def tickets(request: web.Request) -> web.Response:
    deps = _deps(request)
    params = _params(request)
    now = deps.now()
    try:
        f = admin_filter(params, deps.tenants)
        after = cursor_of(params)
    except ParamError as exc:
        return render(request, "error.html", status=400, message=str(exc))
    async with deps.sessions() as session:
        rows, next_cursor = await q.page_tickets(session, f, now=now, limit=PAGE_SIZE, after=after)
        counts = await q.count_by_status(session, f, now=now)
    base = {k: v for k, v in params.items() if k != "cursor" and v}
    items = []
    for ticket in rows:
        tenant = _tenant_of(deps, ticket)
        css, words = due_state(ticket, now)
        items.append(
            _Row(
                t=ticket,
                tenant=tenant.name if tenant else ticket.tenant,
                due=local_time(ticket.due_at, tenant),
                due_css=css,
                due_words=words,
                received=local_time(ticket.received_at, tenant),
            )
        )
    status_links = [
        (
            status,
            counts.get(status, 0),
            "?" + urlencode({**{k: v for k, v in base.items() if k != "status"}, "status": status}),
        )
        for status in TicketStatus
    ]
    return render(
        request,
        "tickets.html",
        items=items,
        params=params,
        counts=status_links,
        total=sum(n for status, n in counts.items() if _shown(f, status)),
        next_url="?" + urlencode({**base, "cursor": encode_cursor(next_cursor)})
        if next_cursor
        else None,
        first_url="?" + urlencode(base) if after is not None else None,
        export_url="/admin/tickets.csv?" + urlencode(base),
        staff_ids=sorted({i for t in deps.tenants for i in t.channels.staff_user_ids}),
    )


def _shown(f: q.TicketFilter, status: str) -> bool:
    """Whether the list, as filtered, shows tickets of `status` (for its total)."""
    if f.status is not None:
        return status == f.status
    if f.active is True or f.overdue or f.due_within is not None:
        return status in q.ACTIVE_STATUSES
    if f.active is False:
        return status not in q.ACTIVE_STATUSES
    return True


async def export(request: web.Request) -> web.StreamResponse:
    """The filtered list as CSV (§7101 records), streamed in keyset batches."""
    deps = _deps(request)
    params = _params(request)
    now = deps.now()
    try:
        f = admin_filter(params, deps.tenants)
    except ParamError as exc:
        return render(request, "error.html", status=400, message=str(exc))
    me = _current(request)
    async with transaction(deps.sessions) as session:
        q.audit(
            session,
            actor=me.actor,
            action="export_csv",
            at=now,
            detail={k: v for k, v in params.items() if k != "cursor"},
            ip=client_ip(request),
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": (
                f'attachment; filename="rightsdesk-requests-{now:%Y%m%d-%H%M}.csv"'
            ),
        }
    )
    _secure(request, response)
    await response.prepare(request)
    async with deps.sessions() as session:
        async for line in admin_reports.export_csv(session, f, deps.tenants, now=now):
            await response.write(line.encode())
    await response.write_eof()
    return response


# --- one ticket -------------------------------------------------------------------------------


async def _load(request: web.Request, session: Any, *, lock: bool = False) -> Ticket:
    ref = request.match_info["ref"].upper()
    query = select(Ticket).where(Ticket.ref == ref)
    if lock:
        query = query.with_for_update()
    ticket: Ticket | None = (await session.exec(query)).first()
    if ticket is None:
        raise web.HTTPNotFound(text="There is no ticket with this reference.")
    return ticket


async def ticket_page(request: web.Request) -> web.Response:
    """GET /admin/tickets/{ref}: everything about one ticket; the view is recorded."""
    return await _ticket_response(request)


async def _ticket_response(
    request: web.Request, *, error: str | None = None, status: int = 200
) -> web.Response:
    deps = _deps(request)
    me = _current(request)
    now = deps.now()
    reveal_id = request.query.get("reveal", "")
    async with transaction(deps.sessions) as session:
        ticket = await _load(request, session)
        assert ticket.id is not None
        revealed = (
            me.is_admin
            and reveal_id.isdigit()
            and len(reveal_id) < 12
            and await q.recent_reveal(
                session,
                audit_id=int(reveal_id),
                actor=me.actor,
                ticket_id=ticket.id,
                since=now - admin_service.REVEAL_FOR,
            )
        )
        q.audit(
            session,
            actor=me.actor,
            action="view_ticket",
            at=now,
            ticket_id=ticket.id,
            detail={"revealed": True} if revealed else {},
            ip=client_ip(request),
        )
        await session.flush()
        addresses = await q.addresses_of(session, ticket)
        data = await admin_service.ticket_page(
            session,
            ticket,
            revealed=bool(revealed),
            sandbox=any(sandbox.is_sandbox_address(ticket.channel, a) for a in addresses),
        )
    tenant = _tenant_of(deps, ticket)
    css, words = due_state(ticket, now)
    return render(
        request,
        "ticket.html",
        status=status,
        d=data,
        t=ticket,
        tenant=tenant,
        due_css=css,
        due_words=words,
        when=lambda moment: local_time(moment, tenant),
        shown=(lambda text: text) if data.revealed else admin_service.mask_text,
        error=error,
        done=DONE.get(request.query.get("done", "")),
        is_open=ticket.status not in CLOSED_STATUSES,
    )


@admin_only
async def reveal(request: web.Request) -> web.StreamResponse:
    """POST …/reveal: record that this admin reveals the contacts, then show them."""
    deps = _deps(request)
    me = _current(request)
    async with transaction(deps.sessions) as session:
        ticket = await _load(request, session)
        row = q.audit(
            session,
            actor=me.actor,
            action="reveal_contacts",
            at=deps.now(),
            ticket_id=ticket.id,
            ip=client_ip(request),
        )
        await session.flush()
        audit_id = row.id
    log.info("admin %s revealed the contacts of %s", me.user.id, ticket.ref)
    raise web.HTTPSeeOther(f"/admin/tickets/{ticket.ref}?reveal={audit_id}")


@admin_only
async def act(request: web.Request) -> web.StreamResponse:
    """POST …/{action}: assign, note, extend, resolve or reject, as the signed-in admin."""
    deps = _deps(request)
    me = _current(request)
    action = request.match_info["action"]
    form = await _form(request)
    now = deps.now()
    try:
        async with transaction(deps.sessions) as session:
            ticket = await _load(request, session, lock=True)
            tenant = _tenant_of(deps, ticket)
            if tenant is None:
                raise admin_service.ActionRefused(f"tenant {ticket.tenant} is not configured")
            await _perform(session, action, ticket, tenant, form, actor=me.actor, now=now)
            # The staff desk's cards in Telegram show the change too.
            await request.config_dict[staff.DESK].ticket_changed(session, ticket, now)
    except admin_service.ActionRefused as exc:
        return await _ticket_response(request, error=str(exc), status=409)
    except ParamError as exc:
        return await _ticket_response(request, error=str(exc), status=400)
    raise web.HTTPSeeOther(f"/admin/tickets/{ticket.ref}?done={action}")


async def _perform(
    session: Any,
    action: str,
    ticket: Ticket,
    tenant: Tenant,
    form: Mapping[str, str],
    *,
    actor: str,
    now: datetime,
) -> None:
    if action == "assign":
        user_id = integer(form, "assignee_user_id", low=1, high=2**53)
        await admin_service.assign(
            session,
            ticket,
            tenant,
            user_id=user_id,
            name=form.get("assignee_name"),
            actor=actor,
            now=now,
        )
    elif action == "note":
        await admin_service.add_note(
            session, ticket, text=form.get("text", ""), actor=actor, now=now
        )
    elif action == "extend":
        await admin_service.extend(
            session,
            ticket,
            tenant,
            reason=form.get("reason", ""),
            by=form.get("by", "").strip() or None,
            actor=actor,
            now=now,
        )
    elif action == "resolve":
        await admin_service.resolve(
            session, ticket, tenant, note=form.get("note", ""), actor=actor, now=now
        )
    elif action == "reject":
        await admin_service.reject(
            session, ticket, tenant, reason=form.get("reason", ""), actor=actor, now=now
        )
    else:
        raise web.HTTPNotFound(text="There is no such action.")


# --- reports and charts -----------------------------------------------------------------------


def _report_params(request: web.Request, deps: Deps) -> tuple[int, str | None]:
    params = _params(request)
    year = integer(params, "year", low=2000, high=2999) or deps.now().year
    return year, choice(params, "tenant", deps.tenants.slugs)


async def report(request: web.Request) -> web.Response:
    deps = _deps(request)
    try:
        year, tenant = _report_params(request, deps)
    except ParamError as exc:
        return render(request, "error.html", status=400, message=str(exc))
    async with deps.sessions() as session:
        data = await admin_reports.year_report(session, year=year, tenant=tenant)
    query = urlencode({k: v for k, v in (("year", year), ("tenant", tenant)) if v})
    return render(
        request,
        "report.html",
        r=data,
        year=year,
        tenant=tenant,
        years=list(range(deps.now().year, deps.now().year - 6, -1)),
        csv_url="/admin/reports.csv?" + query,
    )


async def report_csv(request: web.Request) -> web.Response:
    deps = _deps(request)
    try:
        year, tenant = _report_params(request, deps)
    except ParamError as exc:
        return render(request, "error.html", status=400, message=str(exc))
    async with deps.sessions() as session:
        data = await admin_reports.year_report(session, year=year, tenant=tenant)
    name = f"rightsdesk-metrics-{year}{'-' + tenant if tenant else ''}.csv"
    return web.Response(
        text=admin_reports.report_csv(data),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@admin_only
async def ticket_file(request: web.Request) -> web.StreamResponse:
    """GET /admin/tickets/{ref}/files/{file}: a file kept with the ticket (what the customer
    sent, what staff delivered), decrypted for an admin; the download is recorded."""
    deps = _deps(request)
    me = _current(request)
    file_id = request.match_info["file"]
    if not file_id.isdigit() or len(file_id) > 12:
        raise web.HTTPNotFound(text="There is no such file.")
    async with transaction(deps.sessions) as session:
        ticket = await _load(request, session)
        stored = await session.get(DeskFile, int(file_id))
        if stored is None or stored.ticket_id != ticket.id:
            raise web.HTTPNotFound(text="There is no such file.")
        q.audit(
            session,
            actor=me.actor,
            action="download_file",
            at=deps.now(),
            ticket_id=ticket.id,
            detail={"file": stored.id},
            ip=client_ip(request),
        )
        name, content_type = stored.name, stored.content_type
        data = request.config_dict[staff.DESK].open_file(stored)
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{_ascii_name(name)}"',
            "X-Original-Content-Type": content_type[:100],
        },
    )


def _ascii_name(name: str) -> str:
    """A filename header value that cannot break out of its quotes."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._- ") else "_" for c in name)
    return safe[:100] or "file"


async def charts(request: web.Request) -> web.Response:
    deps = _deps(request)
    try:
        tenant = choice(_params(request), "tenant", deps.tenants.slugs)
    except ParamError as exc:
        return render(request, "error.html", status=400, message=str(exc))
    async with deps.sessions() as session:
        found = await admin_reports.charts(session, now=deps.now(), tenant=tenant)
    return render(request, "charts.html", charts=found, tenant=tenant)


# --- the sandbox ------------------------------------------------------------------------------


@admin_only
async def sandbox_home(request: web.Request) -> web.Response:
    return await _sandbox_home(request)


async def _sandbox_home(
    request: web.Request, *, error: str | None = None, status: int = 200
) -> web.Response:
    deps = _deps(request)
    async with deps.sessions() as session:
        chats = await q.sandbox_chats(session)
    return render(
        request,
        "sandbox.html",
        status=status,
        chats=chats,
        available=sandbox.available_channels(deps.settings),
        error=error,
    )


@admin_only
async def sandbox_open(request: web.Request) -> web.StreamResponse:
    deps = _deps(request)
    me = _current(request)
    form = await _form(request)
    try:
        slug = choice(form, "tenant", deps.tenants.slugs)
        channel = choice(form, "channel", tuple(Channel))
        if slug is None or channel is None:
            raise ParamError("choose a business and a channel")
        assert me.user.id is not None
        chat = await sandbox.open_chat(
            deps.sessions,
            settings=deps.settings,
            admin_id=me.user.id,
            channel=channel,
            tenant=deps.tenants.by_slug(slug),
            language=form.get("language", "en"),
            now=deps.now(),
        )
    except (ParamError, sandbox.SandboxRefused) as exc:
        return await _sandbox_home(request, error=str(exc), status=400)
    deps.wake_inbox()
    raise web.HTTPSeeOther(f"/admin/sandbox/{chat.id}")


async def _chat(request: web.Request) -> SandboxChat:
    chat_id = request.match_info["chat"]
    if not chat_id.isdigit() or len(chat_id) > 12:
        raise web.HTTPNotFound(text="There is no such sandbox chat.")
    async with _deps(request).sessions() as session:
        chat = await session.get(SandboxChat, int(chat_id))
    if chat is None:
        raise web.HTTPNotFound(text="There is no such sandbox chat.")
    return chat


@admin_only
async def sandbox_chat(request: web.Request) -> web.Response:
    deps = _deps(request)
    chat = await _chat(request)
    tenant = deps.tenants.by_slug(chat.tenant) if chat.tenant in deps.tenants else None
    async with deps.sessions() as session:
        filed = await q.sandbox_tickets(session, chat)
        inbound, outbound = await q.sandbox_messages(
            session, chat, [t.id for t in filed if t.id is not None]
        )
    lines: list[dict[str, Any]] = []
    for m in inbound:
        lines.append(
            {
                "at": m.received_at,
                "who": "customer",
                "to": "",
                "text": admin_service.inbound_text(m.channel, m.payload),
                "status": "processed" if m.processed_at else "waiting",
                "buttons": [],
            }
        )
    for o in outbound:
        if o.payload.get("method") == "answer_callback_query":
            continue
        who = admin_service.outbound_party(o, {chat.address})
        markup = o.payload.get("reply_markup") or {}
        buttons = [
            (b.get("text", ""), b.get("callback_data", ""))
            for row in markup.get("inline_keyboard", [])
            for b in row
            if isinstance(b, dict) and b.get("callback_data")
        ]
        lines.append(
            {
                "at": o.created_at,
                "who": "bot" if who == "customer" else who,
                "to": o.recipient if who != "customer" else "",
                "text": _sandbox_text(o, deps),
                "status": o.status
                + (f" ({o.last_error})" if o.last_error and o.status != "sent" else ""),
                "buttons": buttons if who == "customer" else [],
            }
        )
    lines.sort(key=lambda line: line["at"])
    return render(
        request,
        "sandbox_chat.html",
        chat=chat,
        tenant=tenant,
        lines=lines,
        filed=filed,
    )


def _sandbox_text(message: Any, deps: Deps) -> str:
    """Outbox text; a verification mail shows its code here (sandbox tickets only)."""
    text = admin_service.outbound_text(message)
    if message.channel == "email" and "code" in message.payload:
        key = derive_key(deps.settings.secret(), MAIL_KEY_PURPOSE)
        try:
            code = unseal(key, str(message.payload["code"]), context="verification-code")
        except (InvalidTag, ValueError):  # sealed under another SECRET_KEY: say so, do not fail
            code = "(sealed)"
        return f"Mail to {mask_address(message.recipient)}: your code is {code}"
    return text


@admin_only
async def sandbox_say(request: web.Request) -> web.StreamResponse:
    """POST /admin/sandbox/{chat}: the customer writes (or presses a button); wait briefly
    for the same inbox worker that handles real messages, then show the answer."""
    deps = _deps(request)
    chat = await _chat(request)
    form = await _form(request)
    text = form.get("text", "").strip()[:4096]
    button = form.get("button") or None
    if chat.tenant not in deps.tenants:
        return render(request, "error.html", status=409, message="that business is gone")
    if not text and button is None:
        raise web.HTTPSeeOther(f"/admin/sandbox/{chat.id}")
    try:
        inbound_id = await sandbox.say(
            deps.sessions,
            chat,
            deps.tenants.by_slug(chat.tenant),
            text=text or None,
            button=button[:64] if button else None,
            now=deps.now(),
        )
    except sandbox.SandboxRefused as exc:
        return render(request, "error.html", status=400, message=str(exc))
    deps.wake_inbox()
    await sandbox.wait_processed(deps.sessions, inbound_id, within=SANDBOX_WAIT)
    raise web.HTTPSeeOther(f"/admin/sandbox/{chat.id}#end")


# --- outbound webhooks ------------------------------------------------------------------------


@admin_only
async def webhooks(request: web.Request) -> web.Response:
    deps = _deps(request)
    async with deps.sessions() as session:
        deliveries = await q.webhook_deliveries(session)
    secret = deps.settings.secret()
    rows = [
        {
            "tenant": t,
            "url": str(t.webhook_url) if t.webhook_url else None,
            "secret": webhook_secret(secret, t.slug) if t.webhook_url else None,
        }
        for t in deps.tenants
    ]
    return render(request, "webhooks.html", rows=rows, deliveries=deliveries)


# --- wiring -----------------------------------------------------------------------------------


def make_app() -> web.Application:
    """The /admin sub-application: its own middlewares, templates and static files."""
    app = web.Application(middlewares=[security_headers, require_login])
    app[TEMPLATES] = make_templates()
    app.add_routes(
        [
            web.get("", home),
            web.get("/", home),
            web.get("/login", login_page),
            web.post("/login", login),
            web.post("/logout", logout),
            web.get("/tickets", tickets),
            web.get("/tickets.csv", export),
            web.get("/tickets/{ref}", ticket_page),
            web.post("/tickets/{ref}/reveal", reveal),
            web.get("/tickets/{ref}/files/{file}", ticket_file),
            web.post("/tickets/{ref}/{action:assign|note|extend|resolve|reject}", act),
            web.get("/reports", report),
            web.get("/reports.csv", report_csv),
            web.get("/charts", charts),
            web.get("/sandbox", sandbox_home),
            web.post("/sandbox", sandbox_open),
            web.get("/sandbox/{chat}", sandbox_chat),
            web.post("/sandbox/{chat}", sandbox_say),
            web.get("/webhooks", webhooks),
            web.static("/static", HERE / "static", append_version=False),
        ]
    )
    return app
