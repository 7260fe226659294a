"""The admin pages' core: signing in (sessions, throttling), what admins may do to a ticket,
and everything one ticket page shows. No HTTP here; `handlers.admin` is the edge."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.accounts import HASHER
from bot.clock import Duration, parse_duration
from bot.desk import REGULATOR_UNNAMED, REJECTED, RESOLVED, RESOLVED_NOTE
from bot.extensions import ExtensionRefused, extend_ticket
from bot.i18n import translate
from bot.logs import mask_address
from bot.reminders import customer_language, tell_customer
from bot.tenants import Tenant
from storage import admin_queries as q
from storage.admin_models import AdminAudit, AdminSession, LoginAttempt
from storage.db import SessionFactory, transaction
from storage.enums import CLOSED_STATUSES, TicketStatus
from storage.models import (
    AdminUser,
    ContactIdentity,
    InboundMessage,
    OutboundMessage,
    Requester,
    Ticket,
    TicketEvent,
)
from storage.tickets import add_event, events_of

log = logging.getLogger(__name__)

SESSION_IDLE = timedelta(hours=2)
SESSION_MAX = timedelta(hours=12)
TOUCH_EVERY = timedelta(minutes=1)
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 20
REVEAL_FOR = timedelta(minutes=5)
NOTE_LIMIT = 4000


@cache
def _dummy_hash() -> str:
    """Verified against when the account does not exist, so both cases take the same time."""
    return HASHER.hash(secrets.token_urlsafe(16))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- signing in -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A session just opened: the cookie value (shown once) and the user."""

    token: str
    user: AdminUser
    csrf: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    throttled: bool = False


@dataclass(frozen=True, slots=True)
class Current:
    """The signed-in user of a request and their session's CSRF token."""

    user: AdminUser
    csrf: str
    token_hash: str

    @property
    def actor(self) -> str:
        return f"admin:{self.user.id}"

    @property
    def is_admin(self) -> bool:
        return self.user.role == "admin"


async def sign_in(
    sessions: SessionFactory, *, email: str, password: str, ip: str, now: datetime
) -> SignedIn | Refused:
    """Check the throttle, then the password; record the attempt; open a session."""
    email = email.strip().lower()[:320]
    ip = ip[:64]
    since = now - THROTTLE_WINDOW
    async with transaction(sessions) as session:
        by_account = await q.failures_since(session, email=email, since=since)
        by_address = await q.failures_since(session, ip=ip, since=since)
    if by_account >= MAX_FAILURES_PER_ACCOUNT or by_address >= MAX_FAILURES_PER_ADDRESS:
        log.warning("login throttled for %s", mask_address(email))
        return Refused("Too many failed attempts. Wait 15 minutes and try again.", throttled=True)
    async with transaction(sessions) as session:
        user = await q.user_by_email(session, email)
    # argon2 takes tens of milliseconds of CPU on purpose: not on the event loop.
    hashed = user.password_hash if user else await asyncio.to_thread(_dummy_hash)
    ok = await asyncio.to_thread(_password_matches, hashed, password)
    ok = ok and user is not None and not user.disabled
    async with transaction(sessions) as session:
        session.add(LoginAttempt(email=email, ip=ip, ok=ok, at=now))
        if not ok or user is None or user.id is None:
            return Refused("Wrong email or password.")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        session.add(
            AdminSession(
                token_hash=token_digest(token),
                user_id=user.id,
                csrf_token=csrf,
                created_at=now,
                last_seen_at=now,
                expires_at=now + SESSION_IDLE,
            )
        )
        user.last_login_at = now
        if HASHER.check_needs_rehash(user.password_hash):
            user.password_hash = await asyncio.to_thread(HASHER.hash, password)
        session.add(user)
        await q.end_expired_sessions(session, now=now)
        await q.forget_attempts(session, before=now - timedelta(days=30))
    log.info("admin %s signed in", user.id)
    return SignedIn(token, user, csrf)


def _password_matches(hashed: str, password: str) -> bool:
    try:
        return HASHER.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def current_user(sessions: SessionFactory, token: str, *, now: datetime) -> Current | None:
    """The user behind a session cookie, sliding its idle expiry (at most SESSION_MAX)."""
    if not token or len(token) > 100:
        return None
    digest = token_digest(token)
    # read without a write transaction: on SQLite one waits for the database's one writer
    # (the outbox, the clock), up to 185 ms per page view while `serve` catches up
    # (bench/README.md, session 11); the once-a-minute touch writes
    async with sessions() as session:
        found = await q.session_with_user(session, digest, now=now)
    if found is None:
        return None
    row, user = found
    if user.disabled:
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        expires_at = min(now + SESSION_IDLE, row.created_at + SESSION_MAX)
        async with transaction(sessions) as session:
            await q.touch_session(session, digest, now=now, expires_at=expires_at)
    return Current(user=user, csrf=row.csrf_token, token_hash=digest)


async def sign_out(sessions: SessionFactory, token_hash: str) -> None:
    async with transaction(sessions) as session:
        await q.end_session(session, token_hash)


# --- acting on a ticket -------------------------------------------------------------------------


class ActionRefused(ValueError):
    """Why an admin action cannot be done, in words for the page."""


def _must_be_open(ticket: Ticket) -> None:
    if ticket.status in CLOSED_STATUSES:
        raise ActionRefused(f"{ticket.ref} is already {ticket.status.replace('_', ' ')}")


async def assign(
    session: AsyncSession,
    ticket: Ticket,
    tenant: Tenant,
    *,
    user_id: int | None,
    name: str | None,
    actor: str,
    now: datetime,
) -> TicketEvent:
    """Give the ticket to one of the tenant's staff (Telegram user id), or to nobody; an open
    ticket given to someone is then in progress, as when staff claim it in Telegram."""
    _must_be_open(ticket)
    if user_id is not None and user_id not in tenant.channels.staff_user_ids:
        raise ActionRefused(f"{user_id} is not one of {tenant.name}'s staff_user_ids")
    name = " ".join((name or "").split())[:200] or None
    before = ticket.assignee_user_id
    ticket.assignee_user_id = user_id
    ticket.assignee_name = (name or str(user_id)) if user_id is not None else None
    ticket.updated_at = now
    data: dict[str, Any] = {"assignee": user_id, "assignee_name": ticket.assignee_name}
    data["from"] = before
    if user_id is not None and ticket.status == TicketStatus.OPEN:
        ticket.status = TicketStatus.IN_PROGRESS
        data["status"] = str(TicketStatus.IN_PROGRESS)
    session.add(ticket)
    return await add_event(session, ticket, actor=actor, kind="assigned", at=now, data=data)


async def add_note(
    session: AsyncSession, ticket: Ticket, *, text: str, actor: str, now: datetime
) -> TicketEvent:
    """A staff note: kept in the history, never sent to the customer."""
    text = text.strip()
    if not text:
        raise ActionRefused("a note needs some text")
    if len(text) > NOTE_LIMIT:
        raise ActionRefused(f"a note is at most {NOTE_LIMIT} characters")
    ticket.updated_at = now
    session.add(ticket)
    return await add_event(session, ticket, actor=actor, kind="note", at=now, data={"text": text})


async def extend(
    session: AsyncSession,
    ticket: Ticket,
    tenant: Tenant,
    *,
    reason: str,
    by: str | None,
    actor: str,
    now: datetime,
) -> TicketEvent:
    """Extend the deadline as `bot.extensions` allows (by `by`, or as far as allowed)."""
    amount: Duration | None = None
    if by:
        try:
            amount = parse_duration(by)
        except ValueError as exc:
            raise ActionRefused(f"extend by: {exc}") from None
    try:
        granted = await extend_ticket(
            session, ticket, tenant, reason=reason, actor=actor, now=now, by=amount
        )
    except ExtensionRefused as exc:
        raise ActionRefused(str(exc)) from None
    return granted.event


async def resolve(
    session: AsyncSession, ticket: Ticket, tenant: Tenant, *, note: str, actor: str, now: datetime
) -> TicketEvent:
    """Close the ticket as done and tell the requester (with the note, if any), in the
    same words the staff desk uses."""
    _must_be_open(ticket)
    if ticket.status == TicketStatus.AWAITING_VERIFICATION:
        raise ActionRefused(
            f"{ticket.ref} waits for the customer to prove who they are: reject it, or wait"
        )
    note = note.strip()[:NOTE_LIMIT]
    language = customer_language(ticket, tenant)
    text = (
        translate(language, RESOLVED_NOTE, ref=ticket.ref, business=tenant.name, note=note)
        if note
        else translate(language, RESOLVED, ref=ticket.ref)
    )
    await tell_customer(session, ticket, tenant, text, key=f"resolved:{ticket.id}", now=now)
    _close(ticket, TicketStatus.RESOLVED, now)
    session.add(ticket)
    event = await add_event(
        session,
        ticket,
        actor=actor,
        kind="resolved",
        at=now,
        data={"status": str(TicketStatus.RESOLVED), "note": note},
    )
    log.info("ticket %s resolved by %s", ticket.ref, actor)
    return event


async def reject(
    session: AsyncSession, ticket: Ticket, tenant: Tenant, *, reason: str, actor: str, now: datetime
) -> TicketEvent:
    """Refuse the request with a reason the requester is told, and where to complain."""
    _must_be_open(ticket)
    reason = " ".join(reason.split())[:NOTE_LIMIT]
    if not reason:
        raise ActionRefused("a rejection needs a reason: the requester is told it")
    language = customer_language(ticket, tenant)
    regulator = tenant.regulator
    if regulator is not None:
        contact = regulator.url or regulator.email
        authority = f"{regulator.name} ({contact})" if contact else regulator.name
    else:
        authority = translate(language, REGULATOR_UNNAMED)
    text = translate(language, REJECTED, ref=ticket.ref, reason=reason, regulator=authority)
    await tell_customer(session, ticket, tenant, text, key=f"rejected:{ticket.id}", now=now)
    _close(ticket, TicketStatus.REJECTED, now)
    session.add(ticket)
    event = await add_event(
        session,
        ticket,
        actor=actor,
        kind="rejected",
        at=now,
        data={"status": str(TicketStatus.REJECTED), "reason": reason},
    )
    log.info("ticket %s rejected by %s", ticket.ref, actor)
    return event


def _close(ticket: Ticket, status: TicketStatus, now: datetime) -> None:
    ticket.status = status
    ticket.closed_at = now
    ticket.updated_at = now


# --- one ticket's page ------------------------------------------------------------------------


_EMAIL_IN_TEXT = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_DIGITS_IN_TEXT = re.compile(r"(?<![\w-])\+?\d(?:[ -]?\d){5,}(?![\w-])")  # 6+ digits


def mask_text(text: str) -> str:
    """Emails and long numbers (phones, codes) in free text, masked until revealed."""
    text = _EMAIL_IN_TEXT.sub(lambda m: mask_address(m.group(0)), text)
    return _DIGITS_IN_TEXT.sub(lambda m: mask_address(m.group(0).replace(" ", "")), text)


@dataclass(frozen=True, slots=True)
class Contact:
    kind: str
    value: str
    verified: bool


@dataclass(frozen=True, slots=True)
class Line:
    """One message in a transcript, in either direction."""

    at: datetime
    who: str  # customer | bot | staff | email | webhook
    to: str
    text: str
    status: str | None = None


@dataclass(frozen=True, slots=True)
class DueChange:
    at: datetime
    what: str
    due_at: datetime | None
    reason: str | None
    actor: str


@dataclass(frozen=True, slots=True)
class TicketPageData:
    ticket: Ticket
    requester: Requester | None
    contacts: list[Contact]
    revealed: bool
    events: list[TicketEvent]
    notes: list[TicketEvent]
    attachments: list[dict[str, Any]]
    due_history: list[DueChange]
    transcript: list[Line]
    audit: list[AdminAudit]
    actors: dict[str, str]
    sandbox: bool


async def ticket_page(
    session: AsyncSession, ticket: Ticket, *, revealed: bool, sandbox: bool = False
) -> TicketPageData:
    assert ticket.id is not None
    requester, identities = await q.requester_of(session, ticket)
    events = await events_of(session, ticket.id)
    talk = await q.transcript(session, ticket)
    addresses = set(await q.addresses_of(session, ticket))
    contacts = [_contact(identity, revealed) for identity in identities]
    lines = _lines(talk.inbound, talk.outbound, addresses, revealed)
    audit_rows = await q.audit_of_ticket(session, ticket.id)
    admin_ids = {
        int(actor.split(":", 1)[1])
        for actor in [e.actor for e in events] + [a.actor for a in audit_rows]
        if actor.startswith("admin:") and actor.split(":", 1)[1].isdigit()
    }
    emails = await q.admin_emails(session, sorted(admin_ids))
    actors = {f"admin:{i}": email for i, email in emails.items()}
    attachments = [
        {"at": e.at, "actor": e.actor, **file}
        for e in events
        if e.kind in ("attachment", "customer_message", "staff_reply")
        for file in (e.data.get("files") or [])
        if isinstance(file, dict)
    ]
    return TicketPageData(
        ticket=ticket,
        requester=requester,
        contacts=contacts,
        revealed=revealed,
        events=events,
        notes=[e for e in events if e.kind == "note"],
        attachments=attachments,
        due_history=due_history(ticket, events),
        transcript=lines,
        audit=audit_rows,
        actors=actors,
        sandbox=sandbox,
    )


def _contact(identity: ContactIdentity, revealed: bool) -> Contact:
    value = identity.value if revealed else mask_address(identity.value)
    return Contact(identity.kind, value, identity.verified_at is not None)


def due_history(ticket: Ticket, events: list[TicketEvent]) -> list[DueChange]:
    """When the deadline was set and every move since, with the reason given."""
    history: list[DueChange] = []
    moves = [e for e in events if isinstance(e.data, dict) and "due_at" in e.data]
    first = next((e for e in moves if "from" in e.data), None)
    if ticket.clock_started_at is not None:
        original = (
            datetime.fromisoformat(first.data["from"]) if first is not None else ticket.due_at
        )
        if not any(e.kind == "opened" for e in moves):
            history.append(
                DueChange(ticket.clock_started_at, "deadline set", original, None, "system")
            )
    for event in moves:
        due = event.data.get("due_at")
        history.append(
            DueChange(
                at=event.at,
                what={"opened": "clock started (verified)"}.get(
                    event.kind, event.kind.replace("_", " ")
                ),
                due_at=datetime.fromisoformat(due) if isinstance(due, str) else None,
                reason=event.data.get("reason"),
                actor=event.actor,
            )
        )
    return history


def _lines(
    inbound: list[InboundMessage],
    outbound: list[OutboundMessage],
    addresses: set[str],
    revealed: bool,
) -> list[Line]:
    show = (lambda text: text) if revealed else mask_text
    lines = [
        Line(m.received_at, "customer", "desk", show(inbound_text(m.channel, m.payload)))
        for m in inbound
    ]
    for m in outbound:
        who = outbound_party(m, addresses)
        text = outbound_text(m)
        to = m.recipient if who != "customer" else ""
        lines.append(
            Line(
                m.created_at,
                "bot" if who == "customer" else who,
                show(to) if who != "staff" else to,
                show(text) if who != "staff" else text,
                m.status,
            )
        )
    lines.sort(key=lambda line: line.at)
    return lines


def outbound_party(message: OutboundMessage, customer_addresses: set[str]) -> str:
    if message.channel == "email":
        return "email"
    if message.channel == "webhook":
        return "webhook"
    if message.recipient in customer_addresses:
        return "customer"
    return "staff"


def inbound_text(channel: str, payload: dict[str, Any]) -> str:
    """What the customer wrote, from a stored Twilio form or Telegram update."""
    if channel == "whatsapp" or "Body" in payload:
        body = payload.get("Body", "")
        text = body[0] if isinstance(body, list) and body else str(body or "")
        media = payload.get("NumMedia", "0")
        media = media[0] if isinstance(media, list) else media
        if str(media) not in ("", "0"):
            text += f" [{media} attachment(s)]"
        return text
    message = payload.get("message") or payload.get("edited_message")
    if isinstance(message, dict):
        text = str(message.get("text") or message.get("caption") or "")
        if message.get("document") or message.get("photo"):
            text += " [attachment]"
        return text
    query = payload.get("callback_query")
    if isinstance(query, dict):
        return f"[button: {query.get('data', '')}]"
    return "[update]"


def outbound_text(message: OutboundMessage) -> str:
    payload = message.payload or {}
    if message.channel == "email":
        return f"verification code mail ({payload.get('ref', '')})"
    if message.channel == "webhook":
        return f"webhook {payload.get('type', '')}"
    if payload.get("text"):
        return str(payload["text"])
    if payload.get("content_sid"):
        return (
            f"[WhatsApp template {payload['content_sid']}] {payload.get('content_variables', '')}"
        )
    if payload.get("method"):
        return f"[{payload['method']}]"
    if payload.get("document") or payload.get("file"):
        return "[document]"
    return "[message]"
