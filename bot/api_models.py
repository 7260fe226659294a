"""What the JSON API (and the outbound webhooks) say about tickets, events and suppressions,
how list parameters are read, and the opaque cursor — shared by the API, the admin pages
and the webhook relay so that all three describe a ticket the same way."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.tenants import Tenants
from storage.admin_queries import ACTIVE_STATUSES, Cursor, TicketFilter
from storage.enums import Channel, RequestType, TicketStatus
from storage.models import Suppression, Ticket, TicketEvent

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
REF = re.compile(r"^[A-Z0-9]{1,8}-\d{4}-\d{5,12}$")
_CURSOR_PREFIX = "c1."
_MAX_PARAM = 200  # longer query values are refused before they reach the database


class ParamError(ValueError):
    """A query parameter cannot be used; the message says which and why."""


# --- wire models ----------------------------------------------------------------------------


class TicketOut(BaseModel):
    """A ticket as the API and webhooks show it; times carry the tenant's UTC offset."""

    model_config = ConfigDict(title="Ticket")

    ref: str = Field(examples=["OD-2026-00042"])
    tenant: str
    type: RequestType
    status: TicketStatus
    channel: Channel
    language: str
    received_at: datetime
    verified_at: datetime | None
    clock_started_at: datetime | None
    due_at: datetime | None = Field(description="the legal deadline; null until the clock starts")
    closed_at: datetime | None
    overdue: bool = Field(description="still open and past its deadline")
    assignee: str | None = Field(description="the staff member handling it, if any")
    assignee_id: int | None = Field(description="the assignee's Telegram user id")
    updated_at: datetime


class EventOut(BaseModel):
    """One line of a ticket's history."""

    model_config = ConfigDict(title="TicketEvent")

    id: int
    at: datetime
    actor: str = Field(description="customer | system | staff:<telegram id> | admin:<id>")
    kind: str
    data: dict[str, Any]


class SuppressionOut(BaseModel):
    """Someone who must not be contacted for a purpose (opted out)."""

    model_config = ConfigDict(title="Suppression")

    id: int
    tenant: str
    channel: str = Field(description="whatsapp | telegram | email")
    address: str = Field(description="whatsapp:+E164, a Telegram chat id, or an email address")
    category: str = Field(description="marketing, or cookies:<category>")
    created_at: datetime


class TicketPage(BaseModel):
    model_config = ConfigDict(title="TicketPage")

    items: list[TicketOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class EventList(BaseModel):
    model_config = ConfigDict(title="TicketEventList")

    items: list[EventOut]


class SuppressionPage(BaseModel):
    model_config = ConfigDict(title="SuppressionPage")

    items: list[SuppressionOut]
    next_cursor: str | None


class ErrorOut(BaseModel):
    model_config = ConfigDict(title="Error")

    error: str = Field(description="why the request was refused")


def _local(moment: datetime | None, tenants: Tenants, slug: str) -> datetime | None:
    if moment is None:
        return None
    moment = moment.replace(microsecond=0)
    return moment.astimezone(tenants.by_slug(slug).zone) if slug in tenants else moment


def ticket_out(ticket: Ticket, tenants: Tenants, *, now: datetime) -> TicketOut:
    slug = ticket.tenant
    overdue = ticket.status in ACTIVE_STATUSES and ticket.due_at is not None and ticket.due_at < now
    assignee = ticket.assignee_name or (
        str(ticket.assignee_user_id) if ticket.assignee_user_id is not None else None
    )
    received = _local(ticket.received_at, tenants, slug)
    updated = _local(ticket.updated_at, tenants, slug)
    assert received is not None and updated is not None
    return TicketOut(
        ref=ticket.ref,
        tenant=slug,
        type=RequestType(ticket.kind),
        status=TicketStatus(ticket.status),
        channel=Channel(ticket.channel),
        language=ticket.language,
        received_at=received,
        verified_at=_local(ticket.verified_at, tenants, slug),
        clock_started_at=_local(ticket.clock_started_at, tenants, slug),
        due_at=_local(ticket.due_at, tenants, slug),
        closed_at=_local(ticket.closed_at, tenants, slug),
        overdue=overdue,
        assignee=assignee,
        assignee_id=ticket.assignee_user_id,
        updated_at=updated,
    )


def event_out(event: TicketEvent, tenants: Tenants, tenant: str) -> EventOut:
    assert event.id is not None
    at = _local(event.at, tenants, tenant)
    assert at is not None
    return EventOut(id=event.id, at=at, actor=event.actor, kind=event.kind, data=event.data or {})


def suppression_out(row: Suppression, tenants: Tenants) -> SuppressionOut:
    assert row.id is not None
    created = _local(row.created_at, tenants, row.tenant)
    assert created is not None
    return SuppressionOut(
        id=row.id,
        tenant=row.tenant,
        channel=row.channel,
        address=row.address,
        category=row.category,
        created_at=created,
    )


# --- cursors --------------------------------------------------------------------------------


def encode_cursor(cursor: Cursor) -> str:
    due = cursor.due_at.astimezone(UTC).isoformat() if cursor.due_at else None
    raw = json.dumps([due, cursor.id], separators=(",", ":")).encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The position a cursor names, or ParamError for anything this service did not write."""
    bad = ParamError("cursor: not a cursor this API returned")
    if not text.startswith(_CURSOR_PREFIX) or len(text) > _MAX_PARAM:
        raise bad
    body = text[len(_CURSOR_PREFIX) :]
    try:
        value = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not (isinstance(value, list) and len(value) == 2):
        raise bad
    due, row_id = value
    if not isinstance(row_id, int) or isinstance(row_id, bool) or not 0 <= row_id < 2**63:
        raise bad
    if due is None:
        return Cursor(None, row_id)
    if not isinstance(due, str):
        raise bad
    try:
        moment = datetime.fromisoformat(due)
    except ValueError:
        raise bad from None
    if moment.tzinfo is None:
        raise bad
    return Cursor(moment.astimezone(UTC), row_id)


def encode_id_cursor(row_id: int) -> str:
    return encode_cursor(Cursor(None, row_id))


def decode_id_cursor(text: str) -> int:
    cursor = decode_cursor(text)
    if cursor.due_at is not None:
        raise ParamError("cursor: not a cursor this API returned")
    return cursor.id


# --- query parameters -----------------------------------------------------------------------


def _get(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if len(value) > _MAX_PARAM or "\x00" in value:
        raise ParamError(f"{name}: too long or not text")
    return value


def choice(params: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _get(params, name)
    if value is not None and value not in allowed:
        raise ParamError(f"{name}: must be one of {', '.join(allowed)}")
    return value


def boolean(params: Mapping[str, str], name: str) -> bool:
    value = _get(params, name)
    if value is None:
        return False
    if value.lower() in ("true", "1", "on", "yes"):
        return True
    if value.lower() in ("false", "0", "off", "no"):
        return False
    raise ParamError(f"{name}: must be true or false")


def integer(params: Mapping[str, str], name: str, *, low: int, high: int) -> int | None:
    value = _get(params, name)
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", value) or not low <= int(value) <= high:
        raise ParamError(f"{name}: must be a whole number from {low} to {high}")
    return int(value)


def limit_of(params: Mapping[str, str]) -> int:
    found = integer(params, "limit", low=1, high=MAX_LIMIT)
    return DEFAULT_LIMIT if found is None else found


def cursor_of(params: Mapping[str, str]) -> Cursor | None:
    value = _get(params, "cursor")
    return decode_cursor(value) if value is not None else None


def api_filter(params: Mapping[str, str], tenants: Tenants) -> TicketFilter:
    """`GET /api/v1/tickets` parameters: tenant, status, type, overdue."""
    return TicketFilter(
        tenant=choice(params, "tenant", tenants.slugs),
        status=choice(params, "status", tuple(TicketStatus)),
        kind=choice(params, "type", tuple(RequestType)),
        overdue=boolean(params, "overdue"),
    )


StatusView = Literal["active", "closed", "all"]
STATUS_VIEWS: tuple[str, ...] = ("active", "closed", "all")


def admin_filter(params: Mapping[str, str], tenants: Tenants) -> TicketFilter:
    """The admin list's filters; `status` also takes active (the default), closed and all."""
    status = choice(params, "status", (*STATUS_VIEWS, *TicketStatus))
    assignee_text = _get(params, "assignee")
    assignee: int | None = None
    unassigned = False
    if assignee_text == "none":
        unassigned = True
    elif assignee_text is not None:
        if not re.fullmatch(r"[0-9]{1,15}", assignee_text):
            raise ParamError("assignee: a Telegram user id, or none")
        assignee = int(assignee_text)
    within = integer(params, "due_within", low=0, high=3650)
    ref, contacts = search_terms(_get(params, "q"))
    return TicketFilter(
        tenant=choice(params, "tenant", tenants.slugs),
        status=status if status in tuple(TicketStatus) else None,
        active={"active": True, "closed": False}.get(status or "active"),
        kind=choice(params, "type", tuple(RequestType)),
        channel=choice(params, "channel", tuple(Channel)),
        assignee=assignee,
        unassigned=unassigned,
        overdue=boolean(params, "overdue"),
        due_within=timedelta(days=within) if within is not None else None,
        ref=ref,
        contact_values=contacts,
    )


def search_terms(q: str | None) -> tuple[str | None, tuple[str, ...] | None]:
    """A search box value as (reference, contact values): a reference, an email, or a phone
    number / Telegram id in any common spelling."""
    if q is None or not q.strip():
        return None, None
    text = q.strip()
    if REF.match(text.upper()):
        return text.upper(), None
    if "@" in text:
        return None, (text.lower(),)
    digits = re.sub(r"[\s().\-]", "", text.removeprefix("whatsapp:"))
    if re.fullmatch(r"\+?[0-9]{5,20}", digits):
        bare = digits.lstrip("+")
        return None, (f"+{bare}", f"whatsapp:+{bare}", bare)
    raise ParamError("q: search by reference (OD-2026-00042), email address or phone number")
