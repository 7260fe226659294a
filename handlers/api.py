"""The JSON API under /api/v1: bearer tokens, tickets with cursor paging, events,
suppressions, and its OpenAPI 3.1 document (built from the same models that serialise
the answers, with the configured tenants as the `tenant` enum)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema
from sqlmodel import select

from bot.accounts import token_hash
from bot.api_models import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    REF,
    ErrorOut,
    EventList,
    EventOut,
    ParamError,
    SuppressionOut,
    SuppressionPage,
    TicketOut,
    TicketPage,
    api_filter,
    choice,
    cursor_of,
    decode_id_cursor,
    encode_cursor,
    encode_id_cursor,
    event_out,
    limit_of,
    suppression_out,
    ticket_out,
)
from bot.deps import Deps
from bot.tenants import Tenants
from handlers.admin import client_ip, is_https
from handlers.web import DEPS
from storage import admin_queries as q
from storage.db import transaction
from storage.enums import Channel, RequestType, TicketStatus
from storage.models import ApiToken, Ticket
from storage.tickets import events_of

log = logging.getLogger(__name__)

TOKEN = web.RequestKey("api_token", str)  # the request key holding the token name
OPENAPI = web.AppKey("openapi", dict)
TOUCH_EVERY = timedelta(minutes=1)
PUBLIC = ("/api/v1/openapi.json",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _deps(request: web.Request) -> Deps:
    return request.config_dict[DEPS]


def error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer is JSON with a reason, HSTS behind HTTPS; bad parameters are 400."""
    try:
        response = await handler(request)
    except ParamError as exc:
        response = error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        response = error(exc.status, exc.reason.lower(), **headers)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    if is_https(request):
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


@web.middleware
async def bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`Authorization: Bearer <token>` from `rightsdesk token create`, else 401."""
    if request.path in PUBLIC:
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="rightsdesk"'}
    if scheme.lower() != "bearer" or not token.strip():
        return error(401, "missing bearer token", **challenge)
    deps = _deps(request)
    now = deps.now()
    digest = token_hash(token.strip())
    async with deps.sessions() as session:  # no write lock (`admin_service.current_user`)
        found = (
            await session.exec(
                select(ApiToken).where(
                    ApiToken.token_hash == digest,
                    ApiToken.revoked_at == None,  # noqa: E711 (SQL IS NULL)
                )
            )
        ).first()
    if found is None or not secrets.compare_digest(found.token_hash, digest):
        return error(401, "unknown or revoked token", **challenge)
    if found.id is not None and (
        found.last_used_at is None or now - found.last_used_at >= TOUCH_EVERY
    ):
        async with transaction(deps.sessions) as session:
            await q.touch_token(session, found.id, now=now)
    request[TOKEN] = found.name
    return await handler(request)


def _json(model: Any) -> web.Response:
    return web.Response(
        text=model.model_dump_json(), content_type="application/json", charset="utf-8"
    )


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise ParamError(f"unknown parameter {unknown[0]!r}; allowed: {', '.join(allowed)}")
    for key in request.query:
        if len(request.query.getall(key)) > 1:
            raise ParamError(f"{key}: give it once")
        if request.query[key] == "":
            raise ParamError(f"{key}: empty; leave the parameter out instead")
    return {key: request.query[key] for key in request.query}


async def list_tickets(request: web.Request) -> web.Response:
    deps = _deps(request)
    params = _query(request, ("tenant", "status", "type", "overdue", "limit", "cursor"))
    f = api_filter(params, deps.tenants)
    limit = limit_of(params)
    after = cursor_of(params)
    now = deps.now()
    async with deps.sessions() as session:
        rows, next_cursor = await q.page_tickets(session, f, now=now, limit=limit, after=after)
    page = TicketPage(
        items=[ticket_out(t, deps.tenants, now=now) for t in rows],
        next_cursor=encode_cursor(next_cursor) if next_cursor else None,
    )
    return _json(page)


async def _ticket(request: web.Request, session: Any) -> Ticket:
    ref = request.match_info["ref"].upper()
    ticket = await q.ticket_by_ref(session, ref) if REF.match(ref) else None
    if ticket is None:
        raise web.HTTPNotFound(reason="No such ticket")
    return ticket


async def get_ticket(request: web.Request) -> web.Response:
    deps = _deps(request)
    _query(request, ())
    now = deps.now()
    async with transaction(deps.sessions) as session:
        ticket = await _ticket(request, session)
        q.audit(
            session,
            actor=f"token:{request[TOKEN]}",
            action="api_view_ticket",
            at=now,
            ticket_id=ticket.id,
            ip=client_ip(request),
        )
    return _json(ticket_out(ticket, deps.tenants, now=now))


async def ticket_events(request: web.Request) -> web.Response:
    deps = _deps(request)
    _query(request, ())
    async with transaction(deps.sessions) as session:
        ticket = await _ticket(request, session)
        assert ticket.id is not None
        events = await events_of(session, ticket.id)
        q.audit(
            session,
            actor=f"token:{request[TOKEN]}",
            action="api_view_events",
            at=deps.now(),
            ticket_id=ticket.id,
            ip=client_ip(request),
        )
    return _json(EventList(items=[event_out(e, deps.tenants, ticket.tenant) for e in events]))


async def suppressions(request: web.Request) -> web.Response:
    deps = _deps(request)
    params = _query(request, ("tenant", "category", "channel", "limit", "cursor"))
    tenant = choice(params, "tenant", deps.tenants.slugs)
    channel = choice(params, "channel", (*Channel, "email"))
    category = params.get("category") or None
    if category is not None and (len(category) > 40 or "\x00" in category):
        raise ParamError("category: at most 40 characters")
    limit = limit_of(params)
    after = decode_id_cursor(params["cursor"]) if params.get("cursor") else 0
    async with deps.sessions() as session:
        rows, last = await q.page_suppressions(
            session, tenant=tenant, category=category, channel=channel, after_id=after, limit=limit
        )
    page = SuppressionPage(
        items=[suppression_out(row, deps.tenants) for row in rows],
        next_cursor=encode_id_cursor(last) if last is not None else None,
    )
    return _json(page)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI], dumps=lambda d: json.dumps(d, indent=1))


# --- the OpenAPI document -----------------------------------------------------------------


_TITLES = {
    model.__name__: str(model.model_config.get("title"))
    for model in (
        TicketOut,
        EventOut,
        EventList,
        SuppressionOut,
        SuppressionPage,
        TicketPage,
        ErrorOut,
    )
}


def openapi_document(tenants: Tenants) -> dict[str, Any]:
    """OpenAPI 3.1: schemas from the pydantic models the handlers serialise with."""
    _, defs = models_json_schema(
        [
            (TicketPage, "serialization"),
            (TicketOut, "serialization"),
            (EventList, "serialization"),
            (SuppressionPage, "serialization"),
            (ErrorOut, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    # Public names for the models (their titles): Ticket, TicketEvent, Error, …
    text = json.dumps(defs["$defs"])
    for model in (
        TicketOut,
        EventOut,
        EventList,
        SuppressionOut,
        SuppressionPage,
        TicketPage,
        ErrorOut,
    ):
        title = str(model.model_config.get("title"))
        text = text.replace(
            f'"#/components/schemas/{model.__name__}"', f'"#/components/schemas/{title}"'
        )
    schemas = {_TITLES.get(name, name): schema for name, schema in json.loads(text).items()}

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def answer(description: str, schema: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": ref(schema)}},
        }

    errors = {
        "400": answer("a parameter cannot be used; `error` says which and why", "Error"),
        "401": answer("no bearer token, or an unknown or revoked one", "Error"),
    }
    not_found = {"404": answer("no ticket with this reference", "Error")}
    slugs = list(tenants.slugs)
    tenant_param = {
        "name": "tenant",
        "in": "query",
        "required": False,
        "description": "only this business's",
        "schema": {"type": "string", "enum": slugs} if slugs else {"type": "string"},
    }
    limit = {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"page size (default {DEFAULT_LIMIT})",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    }
    cursor = {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "`next_cursor` of the previous page, as given (opaque)",
        "schema": {"type": "string", "pattern": "^c1\\.[A-Za-z0-9_-]+$", "maxLength": 200},
    }
    ref_param = {
        "name": "ref",
        "in": "path",
        "required": True,
        "description": "the ticket reference, e.g. OD-2026-00042",
        "schema": {"type": "string", "pattern": REF.pattern},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rightsdesk API",
            "version": "1.0.0",
            "description": (
                "Privacy-rights requests (tickets) filed over WhatsApp and Telegram, their "
                "history, and the opt-out (suppression) list. Authenticate with "
                "`Authorization: Bearer <token>` from `rightsdesk token create NAME`. Times are "
                "ISO 8601 with the business's UTC offset. Lists page with `limit` and the "
                "opaque `cursor` from `next_cursor`."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/tickets": {
                "get": {
                    "operationId": "listTickets",
                    "summary": "Tickets, soonest deadline first (no deadline yet: last)",
                    "parameters": [
                        tenant_param,
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": list(TicketStatus)},
                        },
                        {
                            "name": "type",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": list(RequestType)},
                        },
                        {
                            "name": "overdue",
                            "in": "query",
                            "required": False,
                            "description": "true: only open tickets past their deadline",
                            "schema": {"type": "boolean"},
                        },
                        limit,
                        cursor,
                    ],
                    "responses": {"200": answer("one page of tickets", "TicketPage"), **errors},
                }
            },
            "/tickets/{ref}": {
                "get": {
                    "operationId": "getTicket",
                    "summary": "One ticket",
                    "parameters": [ref_param],
                    "responses": {"200": answer("the ticket", "Ticket"), **errors, **not_found},
                }
            },
            "/tickets/{ref}/events": {
                "get": {
                    "operationId": "getTicketEvents",
                    "summary": "Every event of one ticket, oldest first",
                    "parameters": [ref_param],
                    "responses": {
                        "200": answer("the ticket's history", "TicketEventList"),
                        **errors,
                        **not_found,
                    },
                }
            },
            "/suppressions": {
                "get": {
                    "operationId": "listSuppressions",
                    "summary": "Who must not be contacted, and for what (opt-outs)",
                    "parameters": [
                        tenant_param,
                        {
                            "name": "channel",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": [*Channel, "email"]},
                        },
                        {
                            "name": "category",
                            "in": "query",
                            "required": False,
                            "description": "marketing, or cookies:<category>",
                            "schema": {"type": "string", "maxLength": 40},
                        },
                        limit,
                        cursor,
                    ],
                    "responses": {
                        "200": answer("one page of suppressions", "SuppressionPage"),
                        **errors,
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def make_app(tenants: Tenants) -> web.Application:
    """The /api/v1 sub-application."""
    app = web.Application(middlewares=[api_errors, bearer])
    app[OPENAPI] = openapi_document(tenants)
    app.add_routes(
        [
            web.get("/openapi.json", openapi),
            web.get("/tickets", list_tickets),
            web.get("/tickets/{ref}", get_ticket),
            web.get("/tickets/{ref}/events", ticket_events),
            web.get("/suppressions", suppressions),
        ]
    )
    return app
