"""The staff desk in Telegram: ticket cards, commands, buttons, force-reply prompts, the relay
between staff and customers, and files delivered to customers.

Everything here runs inside the caller's transaction (the inbox worker's, or the outbox
worker's after-send hook) and only queues Telegram calls in the outbox; nothing here knows
HTTP or Telegram types.

Choices made here:
- A ticket gets its card when it becomes actionable: filed open, or once its requester is
  verified. While the staff chat has `BUSY_BACKLOG` messages or more still waiting to go out
  (Telegram allows 20 a minute to one group), new tickets are listed together in a pending
  *digest* message instead, which takes up to `DIGEST_MAX` tickets while it waits; each
  line has buttons to claim the ticket or open its own card. Nothing is dropped, and a burst
  of 200 tickets costs about 15 messages instead of 200 (10 minutes at Telegram's pace).
- A card is edited in place: a change while its message is still queued rewrites the queued
  payload; a change while it is in flight marks the card dirty and the send hook edits it.
- In a forum group each card opens a topic (`createForumTopic`); the first attempt that fails
  marks the chat as no forum, and cards then go to the chat with replies threaded under them.
  A topic follows its ticket: closed ones are renamed with their outcome ("✓ OD-2026-00042 ·
  …") and closed, and opened again if the ticket is. Each change is an outbox row whose
  dedupe key names the topic and the change's number, so it is queued and sent once; the
  latest row carries the topic's state as queued, from which the next change is worked out.
- Asking the customer (a text reply) sets `awaiting_requester`; a file alone does not. The
  customer's next message that the dialogue would not act on goes back to the ticket.
- Files staff send, and files customers send, are kept sealed (AES-256-GCM under the data
  keyring of storage.crypto, so `rotate-key` covers them, bound to the ticket and a random
  id). Telegram customers get the document itself; WhatsApp customers a
  link `/d/<token>`: 128 random bits, signed with its expiry, 7 days, `LINK_DOWNLOADS`
  downloads, only the token's hash stored; the page counts a download only on its button
  (link previews and scanners fetch pages, they do not post forms).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import Duration, parse_duration, time_left
from bot.conversation import Step
from bot.customers import known_customer
from bot.extensions import ExtensionRefused, extend_ticket, resync_due
from bot.i18n import _, translate
from bot.inbox import RetryLater
from bot.messages import Inbound, Media
from bot.reminders import (
    customer_date,
    customer_language,
    describe,
    staff_time,
    tell_customer,
)
from bot.sealed import derive_key
from bot.tenants import Tenant, Tenants
from bot.understanding import IntentKind, classify
from storage import crypto, outbox
from storage.desk_models import (
    DeskCard,
    DeskCardTicket,
    DeskChat,
    DeskFile,
    DeskPrompt,
    DownloadLink,
    DownloadRecord,
)
from storage.enums import CLOSED_STATUSES, Channel, OutboxStatus, RequestType, TicketStatus
from storage.models import (
    Conversation,
    OutboundMessage,
    Requester,
    Ticket,
    TicketEvent,
    VerificationCode,
)
from storage.reminders import customer_address, last_contact
from storage.tickets import add_event, events_of

log = logging.getLogger(__name__)

PREFIX = "d:"  # callback data of desk buttons: d:<action>:<ticket id> | d:page:<list>:<n>
PROMPT_TTL = timedelta(minutes=10)
PAGE_SIZE = 8
BUSY_BACKLOG = 3  # messages still queued for the staff chat ...
BUSY_RECENT = 10  # ... or sent to it in the last minute (Telegram allows 20): the chat is busy
DIGEST_MAX = 25  # tickets in one digest (two buttons each; Telegram allows 100)
LINK_TTL = timedelta(days=7)
LINK_DOWNLOADS = 5
MAX_FILE_BYTES = 20 * 1024 * 1024  # what the Bot API lets a bot download
CARD_DETAILS = 1500
TELEGRAM_PIECE = 3500
WHATSAPP_PIECE = 1400  # Twilio refuses bodies over 1600 characters
ACK_QUIET = timedelta(minutes=10)
RELEARN = timedelta(days=1)  # a chat found not to be a forum is tried again after this
WINDOW = timedelta(hours=24)
COMMANDS = frozenset(
    {"tickets", "mine", "overdue", "ticket", "claim", "reply", "note", "resolve", "reject",
     "extend", "help"}
)  # fmt: skip
# What a customer can always say, even while a ticket waits for their answer.
_CONTROL = frozenset(
    {IntentKind.STOP, IntentKind.START, IntentKind.CANCEL, IntentKind.STATUS, IntentKind.MENU,
     IntentKind.LANGUAGE, IntentKind.VERIFY, IntentKind.RESEND}
)  # fmt: skip

# --- what customers read (bot/i18n/locales/*/LC_MESSAGES/desk.po) ----------------------

STAFF_MESSAGE = _("Message from {business} about your request {ref}:\n\n{text}")
FILE_CAPTION = _("A file from {business} for your request {ref}.")
FILE_LINK = _(
    "{business} has sent you a file for your request {ref}. Open the link below to download "
    "it. It works until {date}, for {count} downloads at most. Please do not share it."
)
RESOLVED = _("Your request {ref} has been completed.")
RESOLVED_NOTE = _("Your request {ref} has been completed. Note from {business}:\n\n{note}")
REJECTED = _(
    "We are unable to carry out your request {ref}. Reason: {reason}\n\nIf you disagree with "
    "this decision, you have the right to complain to {regulator}."
)
REGULATOR_UNNAMED = _("the data protection authority of the country where you live")
ANSWER_RECEIVED = _(
    "Thank you. We have passed your answer to the team handling your request {ref}."
)
MESSAGE_RECEIVED = _("Thank you. We have added your message to your request {ref}.")
PAGE_TITLE = _("Your file from {business}")
PAGE_BODY = _("Request {ref}. This link works until {date}. Downloads left: {count}.")
PAGE_BUTTON = _("Download")
PAGE_GONE = _(
    "This link has expired or has been used as many times as allowed. Please ask us for a new "
    "one in the chat."
)

# --- what staff read (English: the desk's working language) -----------------------------

KIND_NAMES = {
    RequestType.ACCESS: "Access (copy of data)",
    RequestType.RECTIFICATION: "Rectification",
    RequestType.ERASURE: "Erasure",
    RequestType.PORTABILITY: "Portability (data export)",
    RequestType.RESTRICTION: "Restriction",
    RequestType.OBJECTION: "Objection",
    RequestType.CONSENT_WITHDRAWAL: "Consent withdrawal",
    RequestType.MARKETING_OPT_OUT: "Marketing opt-out",
    RequestType.COOKIE_OPT_OUT: "Cookie opt-out",
    RequestType.COMPLAINT: "Complaint",
}
STATUS_ICONS = {
    TicketStatus.AWAITING_VERIFICATION: "🔐",
    TicketStatus.OPEN: "🆕",
    TicketStatus.IN_PROGRESS: "🛠",
    TicketStatus.AWAITING_REQUESTER: "⏸",
    TicketStatus.RESOLVED: "✅",
    TicketStatus.REJECTED: "⛔",
    TicketStatus.CANCELLED: "↩️",
    TicketStatus.EXPIRED: "⌛",
}
TOPIC_MARKS = {
    TicketStatus.RESOLVED: "✓",
    TicketStatus.REJECTED: "✗",
    TicketStatus.CANCELLED: "↩",
    TicketStatus.EXPIRED: "⌛",
}
LANGUAGE_NAMES = {"en": "English", "ar": "Arabic", "ur": "Urdu"}
CHANNEL_NAMES = {"whatsapp": "WhatsApp", "telegram": "Telegram"}
HELP = (
    "<b>Staff desk</b>\n"
    "/tickets: open tickets, soonest deadline first\n"
    "/mine: open tickets you have claimed\n"
    "/overdue: open tickets past their deadline\n"
    "/ticket REF: the ticket's card\n"
    "/claim REF: take the ticket\n"
    "/reply REF text: write to the customer (send a file with this caption to deliver it)\n"
    "/note REF text: an internal note, never sent to the customer\n"
    "/resolve REF [note]: close it as done; the note goes to the customer\n"
    "/reject REF reason: refuse it; the customer gets the reason and their right to complain\n"
    "/extend REF [duration] reason: extend the deadline (as far as the policy allows)\n"
    "Reply to a card, or write in a ticket's topic, to talk to the customer."
)
USAGE = {
    "ticket": "/ticket REF",
    "claim": "/claim REF",
    "reply": "/reply REF text",
    "note": "/note REF text",
    "resolve": "/resolve REF [note]",
    "reject": "/reject REF reason",
    "extend": "/extend REF [duration] reason",
}
_REF = re.compile(r"^[A-Za-z0-9]{1,8}-\d{4}-\d{5,}$")


class Act(StrEnum):
    CLAIM = "claim"
    REPLY = "reply"
    NOTE = "note"
    RESOLVE = "resolve"
    REJECT = "reject"
    EXTEND = "extend"
    OPEN = "open"


PROMPTS = {
    Act.REPLY: "reply to this message with your answer for the customer of {ref} "
    "(text, a document or a photo)",
    Act.NOTE: "reply to this message with an internal note for {ref}",
    Act.RESOLVE: "reply to this message with a closing note for the customer of {ref} "
    "(or - for none)",
    Act.REJECT: "reply to this message with the reason {ref} is refused; the customer reads it",
    Act.EXTEND: "reply to this message with the reason for extending {ref}; the customer reads it",
}
PLACEHOLDERS = {
    Act.REPLY: "Answer for the customer",
    Act.NOTE: "Internal note",
    Act.RESOLVE: "Closing note (or -)",
    Act.REJECT: "Reason for refusing",
    Act.EXTEND: "Reason for the extension",
}


class Refused(Exception):
    """Why a staff action cannot be done; nothing has changed. The text is shown to staff."""


class NotRecordedYet(RetryLater):
    """Staff answered a message of ours that Telegram has shown them but whose id our outbox
    has not recorded yet (a prompt, a card): the inbox tries the answer again shortly,
    rather than taking it for chatter or for words to the customer."""


def file_context(ticket_id: int, seal_id: str) -> str:
    """What a stored file is bound to: its ticket and its own random id (storage.crypto)."""
    return f"desk_file:{ticket_id}:{seal_id}"


class FileGone(Exception):
    """The provider does not have that file (any more): fetching it again will not help."""


class FileFetcher(Protocol):
    """Fetches the bytes of a file a Telegram user sent (by its file_id)."""

    async def fetch(self, file_id: str, *, limit: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Place:
    """Where a message to staff goes: a chat, a forum topic in it, a message to answer."""

    chat: int
    thread_id: int | None = None
    reply_to: int | None = None

    @classmethod
    def of_ticket(cls, ticket: Ticket, chat: int) -> Place:
        """The ticket's place in the staff chat: its topic, or else under its card."""
        if ticket.staff_thread_id is not None:
            return cls(chat, thread_id=ticket.staff_thread_id)
        return cls(chat, reply_to=ticket.staff_message_id)


def post_to_staff(
    session: AsyncSession,
    place: Place,
    payload: dict[str, Any],
    *,
    tenant: str,
    ticket_id: int | None,
    dedupe_key: str,
) -> None:
    """Queue one Telegram message to `place` (its topic, the message it answers)."""
    if place.thread_id is not None:
        payload["thread_id"] = place.thread_id
    if place.reply_to is not None:
        payload["reply_to"] = place.reply_to
    outbox.enqueue(
        session,
        channel=Channel.TELEGRAM,
        recipient=str(place.chat),
        tenant=tenant,
        ticket_id=ticket_id,
        payload=payload,
        dedupe_key=dedupe_key,
    )


class DownloadState(StrEnum):
    READY = "ready"
    GONE = "gone"  # expired, used up or revoked
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Download:
    """What a download link leads to; `data` only when a download was taken."""

    state: DownloadState
    language: str = "en"
    title: str = ""
    body: str = ""
    button: str = ""
    gone: str = ""
    name: str = ""
    content_type: str = "application/octet-stream"
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Listing:
    key: str  # tickets | mine | overdue
    title: str


LISTINGS = {
    "tickets": Listing("tickets", "Open tickets"),
    "mine": Listing("mine", "Your tickets"),
    "overdue": Listing("overdue", "Overdue tickets"),
}


def parse_command(text: str) -> tuple[str, str] | None:
    """('claim', 'OD-2026-00042') for '/claim@bot OD-2026-00042'; None for anything else."""
    if not text.startswith("/"):
        return None
    head, _sep, rest = text.partition(" ")
    name = head[1:].split("@", 1)[0].lower()
    if not name or not name.replace("_", "").isalnum():
        return None
    return name, rest.strip()


def _e(value: object) -> str:
    return html.escape(str(value), quote=False)


def _kind_name(kind: str) -> str:
    try:
        return KIND_NAMES[RequestType(kind)]
    except ValueError:
        return kind.replace("_", " ")


def _status_name(status: str) -> str:
    return status.replace("_", " ")


def _is_closed(ticket: Ticket) -> bool:
    return ticket.status in CLOSED_STATUSES


def _open_topic_name(ticket: Ticket) -> str:
    """The name a ticket's topic is created with."""
    return f"{ticket.ref} · {_kind_name(ticket.kind)}"[:128]


def topic_name(ticket: Ticket) -> str:
    """A ticket's forum topic name as it should be now: after the outcome once closed."""
    name = _open_topic_name(ticket)
    mark = TOPIC_MARKS.get(TicketStatus(ticket.status)) if _is_closed(ticket) else None
    return f"{mark} {name}"[:128] if mark else name


def _pieces(text: str, limit: int) -> list[str]:
    """Plain text cut at `limit`, after a line or a word where possible."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = rest.rfind("\n", limit // 2, limit)
        if cut < 0:
            cut = rest.rfind(" ", limit // 2, limit)
        if cut < 0:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class Desk:
    """The staff side of every tenant; one per process, stateless between calls."""

    tenants: Tenants
    secret: bytes
    public_url: str | None = None
    files: FileFetcher | None = None
    # Downloaders of what customers send, by channel ("whatsapp", "telegram").
    media: dict[str, FileFetcher] = field(default_factory=dict)
    _link_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._link_key = derive_key(self.secret, "download-links")

    # --- who is who ------------------------------------------------------------------

    def staff_tenants(self, user_id: int | None) -> list[Tenant]:
        """The businesses whose staff list names this Telegram user."""
        if user_id is None:
            return []
        return [t for t in self.tenants if user_id in t.channels.staff_user_ids]

    def chat_tenant(self, chat_id: int) -> Tenant | None:
        """The business whose staff chat this is, if any."""
        return next((t for t in self.tenants if t.channels.staff_chat_id == chat_id), None)

    # --- entry points ------------------------------------------------------------------

    async def wants(self, session: AsyncSession, inbound: Inbound) -> bool:
        """Whether a Telegram message is the desk's: every group message, and in a private
        chat the desk's buttons and commands, and staff answering a prompt or a card."""
        if inbound.channel is not Channel.TELEGRAM:
            return False
        if not inbound.is_private:
            return True
        if (inbound.callback_data or "").startswith(PREFIX):
            return True
        command = parse_command(inbound.text)
        staff = bool(self.staff_tenants(inbound.user_id))
        if command is not None:
            name = command[0]
            return staff if name == "help" else name in COMMANDS
        if not staff or inbound.reply_to_message_id is None:
            return False
        chat, replied = int(inbound.sender), inbound.reply_to_message_id
        if await _prompt_at(session, chat, replied) is not None:
            return True
        if await _ticket_id_of_message(session, chat, replied) is not None:
            return True
        # An answer to a message of ours not recorded yet: handle() has it retried.
        return await _in_flight(session, chat, inbound.received_at, datetime.now(UTC))

    async def handle(self, session: AsyncSession, inbound: Inbound, now: datetime) -> None:
        """Act on one message or button press from a staff chat or a staff member."""
        await _Turn(self, session, inbound, now).run()

    async def ticket_changed(self, session: AsyncSession, ticket: Ticket, now: datetime) -> None:
        """A ticket was filed, verified, withdrawn or otherwise changed outside the desk:
        show it on its cards, or post its first card once it is actionable."""
        if await _cards_of(session, ticket):
            await self.refresh(session, ticket, now)
            return
        if ticket.status == TicketStatus.AWAITING_VERIFICATION or _is_closed(ticket):
            return
        await self.announce(session, ticket, now)

    async def from_customer(
        self,
        session: AsyncSession,
        tenant: Tenant,
        conversation: Conversation,
        inbound: Inbound,
        now: datetime,
    ) -> bool:
        """Take a customer's message for their ticket that waits for them or is being worked
        on, when the dialogue has nothing to do with it; True when taken."""
        if conversation.requester_id is None or inbound.callback_data or inbound.start_param:
            return False
        if conversation.step not in (Step.START, Step.MENU):
            return False
        result = await session.exec(
            select(Ticket)
            .where(
                Ticket.requester_id == conversation.requester_id,
                Ticket.tenant == tenant.slug,
                Ticket.channel == str(inbound.channel),
                col(Ticket.status).in_([TicketStatus.AWAITING_REQUESTER, TicketStatus.IN_PROGRESS]),
            )
            .order_by(col(Ticket.updated_at).desc(), col(Ticket.id).desc())
        )
        active = list(result)
        if not active:
            return False
        intent = classify(inbound.text) if inbound.text.strip() else None
        if intent is not None and intent.kind in _CONTROL:
            return False
        mentioned = [t for t in active if t.ref.lower() in inbound.text.lower()]
        waiting = [t for t in active if t.status == TicketStatus.AWAITING_REQUESTER]
        unknown = intent is None or intent.kind is IntentKind.UNKNOWN
        if waiting and (conversation.step == Step.START or unknown):
            ticket = (mentioned or waiting)[0]
        elif conversation.step == Step.START and unknown:
            ticket = (mentioned or active)[0]
        else:
            return False
        await _CustomerTurn(self, session, tenant, ticket, inbound, now).run()
        return True

    async def after_send(
        self,
        session: AsyncSession,
        message: OutboundMessage,
        provider_id: str | None,
        error: str | None,
    ) -> None:
        """The outbox hook: keep the message id of a card, a topic or a prompt."""
        hook = message.payload.get("hook") or {}
        if "card" in hook:
            await self._card_sent(session, int(hook["card"]), message, provider_id, error)
        elif "topic" in hook:
            await self._topic_made(session, int(hook["topic"]), provider_id, error)
        elif "prompt" in hook:
            prompt = await session.get(DeskPrompt, int(hook["prompt"]))
            if prompt is None:
                return
            if provider_id is not None:
                prompt.message_id = int(provider_id)
            else:
                prompt.closed_at, prompt.outcome = utc(message.created_at), "failed"
            session.add(prompt)

    # --- cards -------------------------------------------------------------------------

    async def announce(self, session: AsyncSession, ticket: Ticket, now: datetime) -> None:
        """Put a new ticket in front of its staff: a card, or a line of a digest when busy."""
        tenant = self.tenants.by_slug(ticket.tenant)
        chat = tenant.channels.staff_chat_id
        if chat is None:
            log.info("ticket %s: %s has no staff chat; no card", ticket.ref, tenant.slug)
            return
        if await _busy(session, chat, now):
            await self._join_digest(session, ticket, tenant, chat, now)
            return
        await self.post_card(session, ticket, Place(chat), now, topic=True)

    async def post_card(
        self, session: AsyncSession, ticket: Ticket, place: Place, now: datetime, *, topic: bool
    ) -> DeskCard:
        """A new card for `ticket`: with `topic`, in the ticket's own place in its staff
        chat (its forum topic, opened first in a forum); else exactly at `place`."""
        tenant = self.tenants.by_slug(ticket.tenant)
        assert ticket.id is not None
        card = DeskCard(tenant=tenant.slug, chat_id=place.chat, kind="ticket", created_at=now)
        session.add(card)
        await session.flush()
        assert card.id is not None
        session.add(DeskCardTicket(card_id=card.id, ticket_id=ticket.id))
        home = topic and place.chat == tenant.channels.staff_chat_id
        if home and ticket.staff_thread_id is None:
            chat = await session.get(DeskChat, place.chat)
            if chat is None or chat.forum is not False or now - utc(chat.updated_at) > RELEARN:
                outbox.enqueue(
                    session,
                    channel=Channel.TELEGRAM,
                    recipient=str(place.chat),
                    tenant=tenant.slug,
                    ticket_id=ticket.id,
                    payload={
                        "method": "create_forum_topic",
                        "name": _open_topic_name(ticket),
                        "hook": {"topic": card.id},
                    },
                )
                return card
        thread = ticket.staff_thread_id if home else place.thread_id
        card.thread_id = thread
        await self._send_card(session, card, [ticket], now, reply_to=place.reply_to)
        return card

    async def _send_card(
        self,
        session: AsyncSession,
        card: DeskCard,
        tickets: Sequence[Ticket],
        now: datetime,
        *,
        reply_to: int | None = None,
    ) -> None:
        text, markup = await self._render(session, card, tickets, now)
        payload: dict[str, Any] = {"text": text, "parse_mode": "HTML", "hook": {"card": card.id}}
        if markup:
            payload["reply_markup"] = markup
        if card.thread_id is not None:
            payload["thread_id"] = card.thread_id
        if reply_to is not None:
            payload["reply_to"] = reply_to
        row = outbox.enqueue(
            session,
            channel=Channel.TELEGRAM,
            recipient=str(card.chat_id),
            tenant=card.tenant,
            ticket_id=tickets[0].id if card.kind == "ticket" else None,
            payload=payload,
        )
        await session.flush()
        card.outbox_id = row.id
        card.message_id = None
        session.add(card)

    async def _join_digest(
        self, session: AsyncSession, ticket: Ticket, tenant: Tenant, chat: int, now: datetime
    ) -> None:
        """Add the ticket to the digest still waiting to go out, or start a new one."""
        assert ticket.id is not None
        result = await session.exec(
            select(DeskCard)
            .where(
                DeskCard.chat_id == chat,
                DeskCard.kind == "digest",
                col(DeskCard.message_id).is_(None),
                col(DeskCard.full).is_(False),
            )
            .order_by(col(DeskCard.id).desc())
            .limit(1)
            .with_for_update()
        )
        digest = result.first()
        if digest is not None and digest.id is not None and digest.outbox_id is not None:
            shown = await _tickets_on(session, digest.id)
            if len(shown) < DIGEST_MAX:
                text, markup = await self._render(session, digest, [*shown, ticket], now)
                if await _rewrite_pending(session, digest.outbox_id, text, markup):
                    session.add(
                        DeskCardTicket(card_id=digest.id, ticket_id=ticket.id, position=len(shown))
                    )
                    return
            digest.full = True
            session.add(digest)
        digest = DeskCard(tenant=tenant.slug, chat_id=chat, kind="digest", created_at=now)
        session.add(digest)
        await session.flush()
        assert digest.id is not None
        session.add(DeskCardTicket(card_id=digest.id, ticket_id=ticket.id))
        await self._send_card(session, digest, [ticket], now)

    async def refresh(self, session: AsyncSession, ticket: Ticket, now: datetime) -> None:
        """Show the ticket's current state on every card that shows it, and on its topic."""
        for card in await _cards_of(session, ticket):
            await self._show(session, card, now)
        await self._sync_topic(session, ticket)

    async def _sync_topic(self, session: AsyncSession, ticket: Ticket) -> None:
        """Close the ticket's forum topic, named with the outcome, once the ticket is closed;
        reopen it if the ticket opens again. A change already queued is not queued again."""
        thread = ticket.staff_thread_id
        chat = self.tenants.by_slug(ticket.tenant).channels.staff_chat_id
        if thread is None or chat is None or ticket.id is None:
            return
        prefix = f"topic:{ticket.id}:{thread}:"
        result = await session.exec(
            select(OutboundMessage)
            .where(
                OutboundMessage.ticket_id == ticket.id,
                col(OutboundMessage.dedupe_key).startswith(prefix, autoescape=True),
            )
            .order_by(col(OutboundMessage.id).desc())
            .limit(1)
        )
        last = result.first()
        shown: dict[str, Any] = {"change": 0, "closed": False, "name": _open_topic_name(ticket)}
        if last is not None:  # the topic as the latest change queued leaves it
            shown = last.payload.get("topic_state") or shown
        closed, name = _is_closed(ticket), topic_name(ticket)
        if shown["closed"] == closed and shown["name"] == name:
            return
        rename = [{"method": "edit_forum_topic", "name": name}] if shown["name"] != name else []
        if closed and not shown["closed"]:
            calls = [*rename, {"method": "close_forum_topic"}]  # renamed while still open
        elif shown["closed"] and not closed:
            calls = [{"method": "reopen_forum_topic"}, *rename]
        else:
            calls = rename
        state = {"change": int(shown["change"]) + 1, "closed": closed, "name": name}
        for call in calls:
            outbox.enqueue(
                session,
                channel=Channel.TELEGRAM,
                recipient=str(chat),
                tenant=ticket.tenant,
                ticket_id=ticket.id,
                payload={**call, "thread_id": thread, "topic_state": state},
                dedupe_key=f"{prefix}{state['change']}:{call['method']}",
            )
        log.info("ticket %s: topic %s %s", ticket.ref, thread, "closed" if closed else "open")

    async def _show(self, session: AsyncSession, card: DeskCard, now: datetime) -> None:
        locked = await _lock_card(session, card.id)
        if locked is None:
            return
        card = locked
        tickets = await _tickets_on(session, card.id)
        if not tickets:
            return
        text, markup = await self._render(session, card, tickets, now)
        if card.outbox_id is not None and await _rewrite_pending(
            session, card.outbox_id, text, markup
        ):
            return
        if card.message_id is None:
            if card.outbox_id is not None:  # the message is on its way: edit it once sent
                card.dirty = True
                session.add(card)
            return
        payload: dict[str, Any] = {
            "method": "edit_message_text",
            "message_id": card.message_id,
            "text": text,
            "parse_mode": "HTML",
            "hook": {"card": card.id},
        }
        if markup:
            payload["reply_markup"] = markup
        row = outbox.enqueue(
            session,
            channel=Channel.TELEGRAM,
            recipient=str(card.chat_id),
            tenant=card.tenant,
            ticket_id=tickets[0].id if card.kind == "ticket" else None,
            payload=payload,
        )
        await session.flush()
        card.outbox_id = row.id
        session.add(card)

    async def _card_sent(
        self,
        session: AsyncSession,
        card_id: int,
        message: OutboundMessage,
        provider_id: str | None,
        error: str | None,
    ) -> None:
        tickets = await _tickets_on(session, card_id, lock=True)  # tickets, then the card:
        card = await _lock_card(session, card_id)  # the order the inbox worker takes them in
        if card is None:
            return
        if card.outbox_id == message.id:
            card.outbox_id = None
        creating = message.payload.get("method", "send_message") == "send_message"
        now = datetime.now(UTC)
        if error is not None:
            gone = "not found" in error.lower()
            log.warning("card %s in chat %s: %s", card.id, card.chat_id, error)
            if gone and tickets:  # the message (or its topic) was deleted: post it again
                if "thread" in error.lower():
                    card.thread_id = None
                    for ticket in tickets:
                        if ticket.staff_thread_id is not None:
                            ticket.staff_thread_id = None
                            session.add(ticket)
                await self._send_card(session, card, tickets, now)
            session.add(card)
            return
        if creating and provider_id is not None:
            card.message_id = int(provider_id)
            for ticket in tickets:
                tenant = self.tenants.by_slug(ticket.tenant)
                if card.chat_id != tenant.channels.staff_chat_id:
                    continue
                if card.kind == "ticket" or ticket.staff_message_id is None:
                    ticket.staff_message_id = card.message_id
                    session.add(ticket)
        session.add(card)
        if card.dirty and card.message_id is not None:
            card.dirty = False
            await self._show(session, card, now)

    async def _topic_made(
        self, session: AsyncSession, card_id: int, provider_id: str | None, error: str | None
    ) -> None:
        tickets = await _tickets_on(session, card_id, lock=True)
        card = await _lock_card(session, card_id)
        if card is None:
            return
        chat = await session.get(DeskChat, card.chat_id)
        if chat is None:
            chat = DeskChat(chat_id=card.chat_id)
        chat.forum = provider_id is not None
        chat.updated_at = datetime.now(UTC)
        session.add(chat)
        if provider_id is not None:
            card.thread_id = int(provider_id)
            for ticket in tickets:
                ticket.staff_thread_id = card.thread_id
                session.add(ticket)
                await self._sync_topic(session, ticket)  # closed while its topic was made
        else:
            log.info("chat %s: no forum topic (%s); cards go to the chat", card.chat_id, error)
        if tickets:
            await self._send_card(session, card, tickets, datetime.now(UTC))

    # --- rendering ---------------------------------------------------------------------

    async def _render(
        self, session: AsyncSession, card: DeskCard, tickets: Sequence[Ticket], now: datetime
    ) -> tuple[str, dict[str, Any] | None]:
        if card.kind == "digest":
            return self.render_digest(tickets, now)
        ticket = tickets[0]
        return await self.render_card(session, ticket, now)

    async def render_card(
        self, session: AsyncSession, ticket: Ticket, now: datetime
    ) -> tuple[str, dict[str, Any] | None]:
        """A ticket's card: everything staff need to pick it up, and its buttons."""
        tenant = self.tenants.by_slug(ticket.tenant)
        icon = STATUS_ICONS.get(TicketStatus(ticket.status), "•")
        who = (
            f"claimed by {_e(ticket.assignee_name or ticket.assignee_user_id)}"
            if ticket.assignee_user_id
            else "not claimed"
        )
        language = LANGUAGE_NAMES.get(ticket.language, ticket.language)
        lines = [
            f"{icon} <b>{_e(ticket.ref)}</b> · {_e(_kind_name(ticket.kind))}",
            f"Status: {_e(_status_name(ticket.status))} · {who}",
            f"Channel: {_e(CHANNEL_NAMES.get(ticket.channel, ticket.channel))} · "
            f"language: {_e(language)}",
            f"Due: {self._due_html(ticket, tenant, now)}",
            f"Identity: {_e(_identity_words(ticket))}",
            f"Customer: {_e(await _customer_words(session, ticket))}",
            f"Received: {_e(staff_time(ticket.received_at, tenant))}",
        ]
        if ticket.details:
            details = ticket.details.strip()
            if len(details) > CARD_DETAILS:
                details = details[:CARD_DETAILS] + "…"
            lines.append(f"Details: <i>{_e(details)}</i>")
        if _is_closed(ticket):
            lines.append(await _closing_words(session, ticket, tenant))
            return "\n".join(lines), None
        assert ticket.id is not None
        rows = [
            [_button("✋ Claim", Act.CLAIM, ticket.id), _button("💬 Reply", Act.REPLY, ticket.id),
             _button("📝 Note", Act.NOTE, ticket.id)],
            [_button("✅ Resolve", Act.RESOLVE, ticket.id),
             _button("⛔ Reject", Act.REJECT, ticket.id),
             _button("⏳ Extend", Act.EXTEND, ticket.id)],
        ]  # fmt: skip
        return "\n".join(lines), {"inline_keyboard": rows}

    def render_digest(
        self, tickets: Sequence[Ticket], now: datetime
    ) -> tuple[str, dict[str, Any] | None]:
        """Several new tickets in one message: a line and two buttons each."""
        lines = [
            f"🗂 <b>{len(tickets)} new request{'s' if len(tickets) != 1 else ''}</b>",
            "The staff chat is busy, so new requests are listed together. Press a reference "
            "for its own card.",
            "",
        ]
        rows: list[list[dict[str, str]]] = []
        for number, ticket in enumerate(tickets, start=1):
            tenant = self.tenants.by_slug(ticket.tenant)
            lines.append(f"{number}. {self._line(ticket, tenant, now)}")
            if not _is_closed(ticket):
                assert ticket.id is not None
                rows.append(
                    [_button(f"🗂 {ticket.ref}", Act.OPEN, ticket.id),
                     _button("✋ Claim", Act.CLAIM, ticket.id)]
                )  # fmt: skip
        return "\n".join(lines), ({"inline_keyboard": rows} if rows else None)

    def _line(self, ticket: Ticket, tenant: Tenant, now: datetime) -> str:
        parts = [
            f"<b>{_e(ticket.ref)}</b>",
            _e(_kind_name(ticket.kind)),
            _e(_status_name(ticket.status)),
            self._due_html(ticket, tenant, now),
        ]
        if ticket.assignee_user_id:
            parts.append(_e(ticket.assignee_name or ticket.assignee_user_id))
        return " · ".join(parts)

    def _due_html(self, ticket: Ticket, tenant: Tenant, now: datetime) -> str:
        """The deadline in the tenant's zone and the time left. The time left is a Telegram
        date-time entity shown relative ("in 6 days", "3 hours ago"), so it stays true
        between edits; its text is what older clients show."""
        if ticket.due_at is None:
            return "starts when the identity is verified"
        when = _e(staff_time(ticket.due_at, tenant))
        if _is_closed(ticket):
            return when
        paused = (
            ticket.status == TicketStatus.AWAITING_REQUESTER
            and tenant.pause_while_awaiting_requester
        )
        if paused:
            return f"{when} (clock stopped while waiting for the customer)"
        left = time_left(ticket.due_at, now)
        unix = int(ticket.due_at.timestamp())
        live = f'<tg-time unix="{unix}" format="r">'
        if left.total_seconds() < 0:
            return f"⚠️ overdue, was due {when} ({live}{describe(left)} ago</tg-time>)"
        return f"{when} ({live}in {describe(left)}</tg-time>)"

    # --- lists -------------------------------------------------------------------------

    async def listing(
        self,
        session: AsyncSession,
        listing: Listing,
        tenants: Sequence[Tenant],
        user_id: int,
        page: int,
        now: datetime,
    ) -> tuple[str, dict[str, Any] | None]:
        """One page of open tickets of `tenants`, soonest deadline first."""
        conditions: list[Any] = [
            col(Ticket.tenant).in_([t.slug for t in tenants]),
            col(Ticket.status).not_in(list(CLOSED_STATUSES)),
        ]
        if listing.key == "mine":
            conditions.append(Ticket.assignee_user_id == user_id)
        if listing.key == "overdue":
            conditions.append(col(Ticket.due_at) < now)
        total = int(
            (
                await session.exec(select(sa.func.count()).select_from(Ticket).where(*conditions))
            ).one()
        )
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(max(page, 1), pages)
        result = await session.exec(
            select(Ticket)
            .where(*conditions)
            .order_by(col(Ticket.due_at).is_(None), col(Ticket.due_at), col(Ticket.id))
            .offset((page - 1) * PAGE_SIZE)
            .limit(PAGE_SIZE)
        )
        found = list(result)
        if not found:
            return f"<b>{_e(listing.title)}</b>: none.", None
        lines = [f"<b>{_e(listing.title)}</b> · {total} · page {page} of {pages}", ""]
        rows: list[list[dict[str, str]]] = []
        for number, ticket in enumerate(found, start=(page - 1) * PAGE_SIZE + 1):
            tenant = self.tenants.by_slug(ticket.tenant)
            lines.append(f"{number}. {self._line(ticket, tenant, now)}")
            assert ticket.id is not None
            rows.append([_button(f"🗂 {ticket.ref}", Act.OPEN, ticket.id)])
        navigation = []
        if page > 1:
            navigation.append(
                {"text": "‹ Previous", "callback_data": f"{PREFIX}page:{listing.key}:{page - 1}"}
            )
        if page < pages:
            navigation.append(
                {"text": "Next ›", "callback_data": f"{PREFIX}page:{listing.key}:{page + 1}"}
            )
        if navigation:
            rows.append(navigation)
        return "\n".join(lines), {"inline_keyboard": rows}

    # --- files and links ---------------------------------------------------------------

    async def store_file(
        self, session: AsyncSession, ticket: Ticket, media: Media, *, user_id: int | None
    ) -> DeskFile:
        """Fetch a file staff sent and keep it encrypted with the ticket."""
        if self.files is None:
            raise Refused("files cannot be received here (the Telegram channel is off)")
        data = await self.files.fetch(media.url, limit=MAX_FILE_BYTES)
        return await self._keep(session, ticket, media, data, user_id=user_id)

    async def _keep(
        self,
        session: AsyncSession,
        ticket: Ticket,
        media: Media,
        data: bytes,
        *,
        user_id: int | None,
        telegram: bool = True,
    ) -> DeskFile:
        assert ticket.id is not None
        seal_id = secrets.token_hex(16)
        sealed = crypto.keyring().seal_bytes(data, context=file_context(ticket.id, seal_id))
        content_type = media.content_type or "application/octet-stream"
        name = media.file_name or _default_name(ticket.ref, content_type)
        stored = DeskFile(
            ticket_id=ticket.id,
            tenant=ticket.tenant,
            seal_id=seal_id,
            name=_safe_name(name),
            content_type=content_type[:100],
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            sealed=sealed,
            telegram_file_id=media.url[:200] if telegram else None,
            uploaded_by=user_id,
        )
        session.add(stored)
        await session.flush()
        return stored

    async def customer_files(
        self, session: AsyncSession, tenant: Tenant, ticket: Ticket, inbound: Inbound, now: datetime
    ) -> list[dict[str, Any]]:
        """Files the customer sent with the dialogue's help: kept, and shown to staff where
        the ticket lives (its topic, under its card)."""
        files = await self.keep_customer_media(session, ticket, inbound)
        _CustomerTurn(self, session, tenant, ticket, inbound, now)._to_staff(files)
        return files

    async def keep_customer_media(
        self, session: AsyncSession, ticket: Ticket, inbound: Inbound
    ) -> list[dict[str, Any]]:
        """Download what the customer sent (with the channel's credentials) and keep it
        sealed with the ticket; returns what the history records of each file.

        A file the provider no longer has, or one too large, is recorded as not kept; a
        provider that cannot be reached raises, and the inbox tries the message again.
        """
        fetcher = self.media.get(str(inbound.channel))
        kept: list[dict[str, Any]] = []
        for media in inbound.media:
            entry: dict[str, Any] = {"content_type": media.content_type, "name": media.file_name}
            if fetcher is None:
                kept.append({**entry, "kept": False, "why": "the channel has no downloader"})
                continue
            try:
                data = await fetcher.fetch(media.url, limit=MAX_FILE_BYTES)
            except (FileGone, Refused) as exc:
                log.info("customer file for %s not kept: %s", ticket.ref, type(exc).__name__)
                kept.append({**entry, "kept": False, "why": str(exc)[:200]})
                continue
            stored = await self._keep(
                session,
                ticket,
                media,
                data,
                user_id=None,
                telegram=inbound.channel is Channel.TELEGRAM,
            )
            kept.append(
                {
                    **entry,
                    "kept": True,
                    "file": stored.id,
                    "name": stored.name,
                    "size": stored.size,
                    "sha256": stored.sha256,
                }
            )
        return kept

    def open_file(self, stored: DeskFile) -> bytes:
        """The plaintext of a stored file; SealError if it was altered or moved."""
        return crypto.keyring().open_bytes(
            stored.sealed, context=file_context(stored.ticket_id, stored.seal_id)
        )

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._link_key, body.encode(), hashlib.sha256).digest()[:16])

    async def new_link(
        self, session: AsyncSession, stored: DeskFile, now: datetime
    ) -> tuple[str, DownloadLink]:
        """A fresh download link: the token (shown once) and its row (its hash only)."""
        assert stored.id is not None
        expires = now + LINK_TTL
        body = f"{secrets.token_urlsafe(16)}.{int(expires.timestamp()):x}"
        token = f"{body}.{self._sign(body)}"
        link = DownloadLink(
            file_id=stored.id,
            ticket_id=stored.ticket_id,
            token_hash=hashlib.sha256(token.encode()).hexdigest(),
            created_at=now,
            expires_at=expires,
            max_downloads=LINK_DOWNLOADS,
        )
        session.add(link)
        await session.flush()
        return token, link

    def link_url(self, token: str) -> str:
        return f"{self.public_url or ''}/d/{token}"

    def _check_token(self, token: str, now: datetime) -> bool:
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 120:
            return False
        body = f"{parts[0]}.{parts[1]}"
        return hmac.compare_digest(parts[2], self._sign(body))

    async def download(
        self,
        session: AsyncSession,
        token: str,
        now: datetime,
        *,
        take: bool = False,
        client: str = "",
        user_agent: str = "",
    ) -> Download:
        """What a link shows (`take=False`), or the file itself, counted and recorded."""
        if not self._check_token(token, now):
            return Download(DownloadState.NOT_FOUND)
        digest = hashlib.sha256(token.encode()).hexdigest()
        query = select(DownloadLink).where(DownloadLink.token_hash == digest)
        if take:
            query = query.with_for_update()
        link = (await session.exec(query)).first()
        if link is None:
            return Download(DownloadState.NOT_FOUND)
        stored = await session.get(DeskFile, link.file_id)
        ticket = await session.get(Ticket, link.ticket_id)
        if stored is None or ticket is None:
            return Download(DownloadState.NOT_FOUND)
        tenant = self.tenants.by_slug(ticket.tenant)
        language = customer_language(ticket, tenant)
        left = link.max_downloads - link.downloads
        shown = Download(
            DownloadState.READY,
            language=language,
            title=translate(language, PAGE_TITLE, business=tenant.name),
            body=translate(
                language,
                PAGE_BODY,
                ref=ticket.ref,
                date=customer_date(link.expires_at, tenant, language),
                count=max(left, 0),
            ),
            button=translate(language, PAGE_BUTTON),
            gone=translate(language, PAGE_GONE),
        )
        if link.revoked_at is not None or now >= link.expires_at or left <= 0:
            return replace(shown, state=DownloadState.GONE)
        if not take:
            return shown
        try:
            data = self.open_file(stored)
        except crypto.SealError:
            log.error("desk file %s failed its integrity check", stored.id)
            return Download(DownloadState.NOT_FOUND)
        link.downloads += 1
        session.add(link)
        assert link.id is not None
        session.add(
            DownloadRecord(link_id=link.id, at=now, client=client[:64], user_agent=user_agent[:200])
        )
        await add_event(
            session,
            ticket,
            actor="customer",
            kind="file_downloaded",
            at=now,
            data={"file": stored.id, "link": link.id, "download": link.downloads},
        )
        log.info(
            "file %s of %s downloaded (%s of %s)",
            stored.id,
            ticket.ref,
            link.downloads,
            link.max_downloads,
        )
        return replace(shown, name=stored.name, content_type=stored.content_type, data=data)


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _button(text: str, act: Act, ticket_id: int) -> dict[str, str]:
    return {"text": text, "callback_data": f"{PREFIX}{act}:{ticket_id}"}


def _default_name(ref: str, content_type: str) -> str:
    extension = {
        "image/jpeg": "jpg",
        "image/png": "png",
        "application/pdf": "pdf",
        "text/csv": "csv",
        "application/json": "json",
        "application/zip": "zip",
    }.get(content_type.split(";")[0].strip().lower(), "bin")
    return f"{ref}.{extension}"


def _safe_name(name: str) -> str:
    """A file name safe for a Content-Disposition header and any file system."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", name, flags=re.UNICODE).strip(" .") or "file"
    return cleaned[:120]


def _identity_words(ticket: Ticket) -> str:
    if ticket.verified_at is not None:
        return "✅ verified by a code sent to their email"
    if ticket.status == TicketStatus.AWAITING_VERIFICATION:
        return "⏳ not verified yet"
    if ticket.channel == Channel.WHATSAPP:
        return "not required for this request (writes from their WhatsApp number)"
    return "not required for this request"


async def _proven_email(session: AsyncSession, ticket: Ticket) -> str | None:
    """The email address the requester proved for this ticket with a code, if any."""
    result = await session.exec(
        select(VerificationCode.email)
        .where(
            VerificationCode.ticket_id == ticket.id,
            col(VerificationCode.verified_at).is_not(None),
        )
        .order_by(col(VerificationCode.id).desc())
        .limit(1)
    )
    return result.first()


async def _known_as(session: AsyncSession, ticket: Ticket, requester_id: int) -> str | None:
    """'known customer (...)' when a proven identity is on the customer list, else None."""
    requester = await session.get(Requester, requester_id)
    if requester is not None and requester.customer_ref:
        return f"✅ known customer (customer id {requester.customer_ref})"
    email = await _proven_email(session, ticket)
    if email and (found := await known_customer(session, tenant=ticket.tenant, email=email)):
        return f"✅ known customer (customer id {found}, by the verified email)"
    if ticket.channel != Channel.WHATSAPP:
        return None
    address = await customer_address(session, ticket)
    phone = address.removeprefix("whatsapp:") if address else None
    if phone and (found := await known_customer(session, tenant=ticket.tenant, phone=phone)):
        return f"✅ known customer (customer id {found}, by their WhatsApp number)"
    return None


async def _customer_words(session: AsyncSession, ticket: Ticket) -> str:
    """Whether a proven identity (the email verified by code, the WhatsApp number written
    from) is on the business's customer list, and how many requests came before."""
    if ticket.requester_id is None:
        return "unknown"
    known = await _known_as(session, ticket, ticket.requester_id)
    earlier = int(
        (
            await session.exec(
                select(sa.func.count())
                .select_from(Ticket)
                .where(
                    Ticket.requester_id == ticket.requester_id,
                    Ticket.tenant == ticket.tenant,
                    col(Ticket.id) < (ticket.id or 0),
                    Ticket.kind != RequestType.MARKETING_OPT_OUT,
                )
            )
        ).one()
    )
    history = (
        f"{earlier} earlier request{'s' if earlier != 1 else ''}" if earlier else "first request"
    )
    return f"{known or 'not on the customer list'} · {history}"


async def _closing_words(session: AsyncSession, ticket: Ticket, tenant: Tenant) -> str:
    assert ticket.id is not None
    events = await events_of(session, ticket.id)
    closing = next((e for e in reversed(events) if e.data.get("status") == ticket.status), None)
    when = staff_time(ticket.closed_at or ticket.updated_at, tenant)
    by = ""
    if closing is not None:
        if closing.data.get("staff_name"):
            by = f" by {_e(closing.data['staff_name'])}"
        elif closing.actor == "customer":
            by = " by the customer"
    label = {
        TicketStatus.RESOLVED: "✅ Resolved",
        TicketStatus.REJECTED: "⛔ Rejected",
        TicketStatus.CANCELLED: "↩️ Withdrawn",
        TicketStatus.EXPIRED: "⌛ Expired (never verified)",
    }.get(TicketStatus(ticket.status), "Closed")
    return f"<b>{label}</b>{by} on {_e(when)}"


# --- queries ------------------------------------------------------------------------


async def _busy(session: AsyncSession, chat: int, now: datetime) -> bool:
    """Whether a chat already has enough queued, or had enough sent in the last minute,
    that a new card would wait for Telegram's limit (20 messages a minute to a group).
    Only the chat's latest messages are read (the recipient index, newest first)."""
    latest = (
        select(OutboundMessage.status, OutboundMessage.sent_at)
        .where(
            OutboundMessage.channel == Channel.TELEGRAM,
            OutboundMessage.recipient_index == crypto.blind_index(str(chat)),
        )
        .order_by(col(OutboundMessage.id).desc())
        .limit(200)
        .subquery()
    )
    waiting = latest.c.status.in_([OutboxStatus.PENDING, OutboxStatus.SENDING])
    recent = sa.and_(
        latest.c.status == OutboxStatus.SENT, latest.c.sent_at >= now - timedelta(minutes=1)
    )
    result = await session.exec(
        select(sa.func.count().filter(waiting), sa.func.count().filter(recent)).select_from(latest)
    )
    queued, sent = result.one()
    return int(queued) >= BUSY_BACKLOG or int(sent) >= BUSY_RECENT


async def _cards_of(session: AsyncSession, ticket: Ticket) -> list[DeskCard]:
    if ticket.id is None:
        return []
    result = await session.exec(
        select(DeskCard)
        .join(DeskCardTicket, col(DeskCardTicket.card_id) == col(DeskCard.id))
        .where(DeskCardTicket.ticket_id == ticket.id)
        .order_by(col(DeskCard.id))
    )
    return list(result)


async def _tickets_on(
    session: AsyncSession, card_id: int | None, *, lock: bool = False
) -> list[Ticket]:
    """The tickets a card shows, in order; `lock` takes their rows (in id order)."""
    query = (
        select(Ticket)
        .join(DeskCardTicket, col(DeskCardTicket.ticket_id) == col(Ticket.id))
        .where(DeskCardTicket.card_id == card_id)
    )
    if lock:
        locked = query.order_by(col(Ticket.id)).with_for_update(of=Ticket)
        await session.exec(locked.execution_options(populate_existing=True))
    result = await session.exec(query.order_by(col(DeskCardTicket.position), col(Ticket.id)))
    return list(result)


async def _lock_card(session: AsyncSession, card_id: int | None) -> DeskCard | None:
    if card_id is None:
        return None
    result = await session.exec(
        select(DeskCard)
        .where(DeskCard.id == card_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.first()


async def _rewrite_pending(
    session: AsyncSession, row_id: int, text: str, markup: dict[str, Any] | None
) -> bool:
    """Put new content in a queued message that has not been taken for sending yet.

    A row locked by someone else is being claimed or marked sent: it counts as taken, and
    we never wait for it (the send hook holding it may be waiting for our card).
    """
    result = await session.exec(
        select(OutboundMessage)
        .where(OutboundMessage.id == row_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    row = result.first()
    if row is None or row.status != OutboxStatus.PENDING:
        return False
    payload = {k: v for k, v in row.payload.items() if k != "reply_markup"}
    payload["text"] = text
    if markup:
        payload["reply_markup"] = markup
    row.payload = payload
    session.add(row)
    return True


async def _in_flight(session: AsyncSession, chat: int, before: datetime, now: datetime) -> bool:
    """Whether a message queued for this chat before `before` is being sent right now: taken
    by an outbox worker whose lease still runs, maybe already shown by Telegram, its id not
    yet recorded. The lease bounds how long this stays true."""
    result = await session.exec(
        select(OutboundMessage.id)
        .where(
            OutboundMessage.channel == Channel.TELEGRAM,
            OutboundMessage.recipient_index == crypto.blind_index(str(chat)),
            OutboundMessage.status == OutboxStatus.SENDING,
            col(OutboundMessage.created_at) <= before,
            col(OutboundMessage.locked_until) > now,
        )
        .limit(1)
    )
    return result.first() is not None


async def _prompt_at(session: AsyncSession, chat: int, message_id: int) -> DeskPrompt | None:
    result = await session.exec(
        select(DeskPrompt).where(DeskPrompt.chat_id == chat, DeskPrompt.message_id == message_id)
    )
    return result.first()


async def _ticket_id_of_message(
    session: AsyncSession, chat: int, message_id: int
) -> int | str | None:
    """The ticket a message in a staff chat is about: its card, a relay, a reminder, the
    topic's first message; "digest" for a message about several tickets; None if none."""
    result = await session.exec(
        select(DeskCard).where(DeskCard.chat_id == chat, DeskCard.message_id == message_id)
    )
    card = result.first()
    if card is not None:
        if card.kind == "digest":
            return "digest"
        tickets = await _tickets_on(session, card.id)
        return tickets[0].id if tickets else None
    rows = await session.exec(
        select(OutboundMessage.ticket_id)
        .where(
            OutboundMessage.channel == Channel.TELEGRAM,
            OutboundMessage.recipient_index == crypto.blind_index(str(chat)),
            OutboundMessage.provider_id == str(message_id),
            col(OutboundMessage.ticket_id).is_not(None),
        )
        .order_by(col(OutboundMessage.id).desc())
        .limit(1)
    )
    return rows.first()


# --- one staff message or button press ------------------------------------------------


class _Turn:
    """One staff update: who, where, what; answers and acts inside the transaction."""

    def __init__(self, desk: Desk, session: AsyncSession, inbound: Inbound, now: datetime):
        self.desk, self.session, self.inbound, self.now = desk, session, inbound, now
        self.chat = int(inbound.sender)
        self.user = inbound.user_id
        self.name = (inbound.display_name or f"user {self.user}")[:200]
        self.actor = f"staff:{self.user}"
        self.private = inbound.is_private
        self.group_tenant = None if self.private else desk.chat_tenant(self.chat)
        self.here = Place(self.chat, inbound.thread_id, inbound.message_id)
        self.said = 0
        self.answered = False

    # --- scope ---------------------------------------------------------------------------

    @property
    def tenants(self) -> list[Tenant]:
        """The businesses this user may act for here: in a group, that group's business
        (if they are on its staff); in a private chat, every business they are staff of."""
        mine = self.desk.staff_tenants(self.user)
        if self.private:
            return mine
        return [
            t for t in mine if self.group_tenant is not None and t.slug == self.group_tenant.slug
        ]

    def refusal(self) -> str:
        if self.group_tenant is not None and not self.private:
            return (
                f"⛔ Only the staff of {self.group_tenant.name} can do this here; "
                "nothing was changed."
            )
        return "⛔ This is for the staff of a business on this desk; nothing was changed."

    async def ticket(self, ticket_id: int) -> tuple[Ticket, Tenant]:
        ticket = await self.session.get(Ticket, ticket_id)
        scope = {t.slug: t for t in self.tenants}
        if ticket is None or ticket.tenant not in scope:
            raise Refused(self.refusal())
        return ticket, scope[ticket.tenant]

    async def ticket_by_ref(self, ref: str) -> tuple[Ticket, Tenant]:
        scope = {t.slug: t for t in self.tenants}
        if _REF.match(ref):
            result = await self.session.exec(select(Ticket).where(Ticket.ref == ref.upper()))
            ticket = result.first()
            if ticket is not None and ticket.tenant in scope:
                return ticket, scope[ticket.tenant]
        raise Refused(f"No ticket {_e(ref)} among the tickets you can see.")

    # --- output --------------------------------------------------------------------------

    def say(
        self,
        text: str,
        *,
        place: Place | None = None,
        markup: dict[str, Any] | None = None,
        ticket: Ticket | None = None,
        hook: dict[str, Any] | None = None,
    ) -> OutboundMessage:
        place = place or self.here
        self.said += 1
        payload: dict[str, Any] = {"text": text, "parse_mode": "HTML"}
        if markup:
            payload["reply_markup"] = markup
        if place.thread_id is not None:
            payload["thread_id"] = place.thread_id
        if place.reply_to is not None:
            payload["reply_to"] = place.reply_to
        if hook:
            payload["hook"] = hook
        return outbox.enqueue(
            self.session,
            channel=Channel.TELEGRAM,
            recipient=str(place.chat),
            tenant=ticket.tenant if ticket else None,
            ticket_id=ticket.id if ticket else None,
            payload=payload,
            dedupe_key=f"desk:{self.inbound.provider_id}:{self.said}",
        )

    def answer(self, text: str | None = None, *, alert: bool = False) -> None:
        """Answer the button press once (Telegram shows the text as a toast or an alert)."""
        if self.inbound.callback_id is None or self.answered:
            return
        self.answered = True
        payload: dict[str, Any] = {
            "method": "answer_callback_query",
            "callback_id": self.inbound.callback_id,
        }
        if text:
            payload["text"] = text[:190]
            payload["show_alert"] = alert
        outbox.enqueue(
            self.session,
            channel=Channel.TELEGRAM,
            recipient=str(self.user or self.chat),
            payload=payload,
            dedupe_key=f"cbq:{self.inbound.provider_id}",
        )

    def refuse(self, reason: str) -> None:
        log.info("desk: user %s refused in chat %s", self.user, self.chat)
        if self.inbound.callback_id is not None:
            self.answer(html.unescape(re.sub(r"<[^>]+>", "", reason)), alert=True)
        else:
            self.say(reason)

    # --- routing -------------------------------------------------------------------------

    async def run(self) -> None:
        """Act; a refusal undoes whatever the turn had begun (a savepoint) and says why."""
        try:
            async with self.session.begin_nested():
                if self.inbound.callback_id is not None:
                    await self.button(self.inbound.callback_data or "")
                else:
                    await self.message()
        except Refused as refused:
            self.refuse(str(refused))
        finally:
            self.answer()

    async def message(self) -> None:
        inbound = self.inbound
        command = parse_command(inbound.text)
        if command is not None:
            name, args = command
            if name not in COMMANDS:
                return  # another bot's command, or chatter
            if not self.tenants:
                raise Refused(self.refusal())
            await self.command(name, args)
            return
        if inbound.reply_to_message_id is not None:
            prompt = await _prompt_at(self.session, self.chat, inbound.reply_to_message_id)
            if prompt is not None:
                await self.prompt_answer(prompt)
                return
            found = await _ticket_id_of_message(
                self.session, self.chat, inbound.reply_to_message_id
            )
            if found == "digest":
                if not self.tenants:
                    raise Refused(self.refusal())
                raise Refused(
                    "That message lists several tickets: press a reference for its own card "
                    "and reply there, or use /reply REF text."
                )
            if isinstance(found, int):
                await self.relay(found)
                return
            if await _in_flight(self.session, self.chat, inbound.received_at, self.now):
                raise NotRecordedYet(f"chat {self.chat} message {inbound.reply_to_message_id}")
        if inbound.thread_id is not None and not self.private and self.group_tenant is not None:
            result = await self.session.exec(
                select(Ticket.id).where(
                    Ticket.tenant == self.group_tenant.slug,
                    Ticket.staff_thread_id == inbound.thread_id,
                )
            )
            ticket_id = result.first()
            if ticket_id is not None:
                await self.relay(ticket_id)

    async def relay(self, ticket_id: int) -> None:
        """Staff wrote under a card or in a ticket's topic: that goes to the customer."""
        if not self.tenants:
            raise Refused(self.refusal())
        ticket, tenant = await self.ticket(ticket_id)
        if not self.inbound.text.strip() and not self.inbound.media:
            return
        await _Action(self, ticket, tenant).reply(self.inbound.text, self.inbound.media)

    async def command(self, name: str, args: str) -> None:
        if name == "help":
            self.say(HELP)
            return
        if name in LISTINGS:
            page = int(args) if args.isdigit() else 1
            text, markup = await self.desk.listing(
                self.session, LISTINGS[name], self.tenants, self.user or 0, page, self.now
            )
            self.say(text, markup=markup)
            return
        ref, _sep, rest = args.partition(" ")
        rest = rest.strip()
        if not ref:
            raise Refused(f"Usage: {USAGE[name]}")
        ticket, tenant = await self.ticket_by_ref(ref)
        action = _Action(self, ticket, tenant)
        match name:
            case "ticket":
                await self.desk.post_card(self.session, ticket, self.here, self.now, topic=False)
            case "claim":
                await action.claim()
            case "reply":
                if not rest and not self.inbound.media:
                    raise Refused(f"Usage: {USAGE[name]}")
                await action.reply(rest, self.inbound.media)
            case "note":
                if not rest:
                    raise Refused(f"Usage: {USAGE[name]}")
                await action.note(rest)
            case "resolve":
                await action.resolve(rest)
            case "reject":
                if not rest:
                    raise Refused(f"A rejection needs a reason. Usage: {USAGE[name]}")
                await action.reject(rest)
            case "extend":
                await action.extend(rest)

    async def button(self, data: str) -> None:
        parts = data.removeprefix(PREFIX).split(":")
        if not data.startswith(PREFIX) or len(parts) < 2:
            self.answer("This button is no longer valid.")
            return
        if not self.tenants:
            raise Refused(self.refusal())
        if parts[0] == "page" and len(parts) == 3 and parts[1] in LISTINGS:
            page = int(parts[2]) if parts[2].isdigit() else 1
            text, markup = await self.desk.listing(
                self.session, LISTINGS[parts[1]], self.tenants, self.user or 0, page, self.now
            )
            self.edit_here(text, markup)
            self.answer()
            return
        try:
            act, ticket_id = Act(parts[0]), int(parts[1])
        except ValueError:
            self.answer("This button is no longer valid.")
            return
        ticket, tenant = await self.ticket(ticket_id)
        if act is Act.CLAIM:
            await _Action(self, ticket, tenant).claim()
            self.answer(f"{ticket.ref} is yours.")
        elif act is Act.OPEN:
            place = Place(self.chat)
            if self.chat == tenant.channels.staff_chat_id:
                await self.desk.post_card(self.session, ticket, place, self.now, topic=True)
            else:
                await self.desk.post_card(self.session, ticket, place, self.now, topic=False)
            self.answer()
        else:
            if _is_closed(ticket):
                raise Refused(f"{ticket.ref} is already {_status_name(ticket.status)}.")
            await self.ask(ticket, tenant, act)
            self.answer("Answer the message I just sent.")

    def edit_here(self, text: str, markup: dict[str, Any] | None) -> None:
        if self.inbound.message_id is None:
            return
        payload: dict[str, Any] = {
            "method": "edit_message_text",
            "message_id": self.inbound.message_id,
            "text": text,
            "parse_mode": "HTML",
        }
        if markup:
            payload["reply_markup"] = markup
        self.said += 1
        outbox.enqueue(
            self.session,
            channel=Channel.TELEGRAM,
            recipient=str(self.chat),
            payload=payload,
            dedupe_key=f"desk:{self.inbound.provider_id}:{self.said}",
        )

    # --- prompts -------------------------------------------------------------------------

    async def ask(self, ticket: Ticket, tenant: Tenant, act: Act) -> None:
        """A force-reply question for the text a button needs."""
        assert ticket.id is not None and self.user is not None
        await self.session.exec(
            sa.update(DeskPrompt)
            .where(
                col(DeskPrompt.chat_id) == self.chat,
                col(DeskPrompt.user_id) == self.user,
                col(DeskPrompt.closed_at).is_(None),
            )
            .values(closed_at=self.now, outcome="superseded")
        )
        prompt = DeskPrompt(
            tenant=tenant.slug,
            ticket_id=ticket.id,
            chat_id=self.chat,
            user_id=self.user,
            action=act,
            created_at=self.now,
            expires_at=self.now + PROMPT_TTL,
        )
        self.session.add(prompt)
        await self.session.flush()
        minutes = int(PROMPT_TTL.total_seconds() // 60)
        mention = f'<a href="tg://user?id={self.user}">{_e(self.name)}</a>'
        text = (
            f"{mention}, {_e(PROMPTS[act].format(ref=ticket.ref))}. "
            f"This question times out in {minutes} minutes; reply cancel to drop it."
        )
        thread = ticket.staff_thread_id if self.chat == tenant.channels.staff_chat_id else None
        self.say(
            text,
            place=Place(self.chat, thread),
            markup={
                "force_reply": True,
                "selective": True,
                "input_field_placeholder": PLACEHOLDERS[act],
            },
            ticket=ticket,
            hook={"prompt": prompt.id},
        )

    async def prompt_answer(self, prompt: DeskPrompt) -> None:
        if prompt.user_id != self.user:
            if not self.tenants:
                raise Refused(self.refusal())
            raise Refused("That question was for someone else; nothing was changed.")
        if prompt.closed_at is not None:
            raise Refused(
                "That question was already answered or has timed out; nothing was changed."
            )
        ticket, tenant = await self.ticket(prompt.ticket_id)
        if self.now >= utc(prompt.expires_at):
            prompt.closed_at, prompt.outcome = self.now, "expired"
            self.session.add(prompt)
            self.say(
                f"⌛ That question about {_e(ticket.ref)} timed out; nothing was done. "
                "Press the button on the card again."
            )
            return
        text = self.inbound.text.strip()
        if text.lower() in ("cancel", "/cancel"):
            prompt.closed_at, prompt.outcome = self.now, "cancelled"
            self.session.add(prompt)
            self.say("Dropped; nothing was done.")
            return
        action = _Action(self, ticket, tenant)
        match Act(prompt.action):
            case Act.REPLY:
                if not text and not self.inbound.media:
                    raise Refused("Nothing to send: reply with a text, a document or a photo.")
                await action.reply(text, self.inbound.media)
            case Act.NOTE:
                if not text:
                    raise Refused("An empty note was not kept.")
                await action.note(text)
            case Act.RESOLVE:
                await action.resolve("" if text == "-" else text)
            case Act.REJECT:
                if not text:
                    raise Refused("A rejection needs a reason.")
                await action.reject(text)
            case Act.EXTEND:
                await action.extend(text)
            case _:
                raise Refused("That question cannot be answered.")
        prompt.closed_at, prompt.outcome = self.now, "done"
        self.session.add(prompt)


class _Action:
    """What staff do to one ticket; each changes it, records an event and refreshes cards."""

    def __init__(self, turn: _Turn, ticket: Ticket, tenant: Tenant) -> None:
        self.turn, self.ticket, self.tenant = turn, ticket, tenant
        self.desk, self.session, self.now = turn.desk, turn.session, turn.now

    def _open(self) -> None:
        if _is_closed(self.ticket):
            raise Refused(f"{self.ticket.ref} is already {_status_name(self.ticket.status)}.")

    async def _event(self, kind: str, data: dict[str, Any]) -> None:
        self.ticket.updated_at = self.now
        self.session.add(self.ticket)
        await add_event(
            self.session,
            self.ticket,
            actor=self.turn.actor,
            kind=kind,
            at=self.now,
            data={"staff_name": self.turn.name, **data},
        )
        await self.desk.refresh(self.session, self.ticket, self.now)

    def _key(self, what: str) -> str:
        return f"desk:{self.turn.inbound.provider_id}:{what}"

    async def _tell(self, text: str, what: str) -> bool:
        limit = WHATSAPP_PIECE if self.ticket.channel == Channel.WHATSAPP else TELEGRAM_PIECE
        sent = True
        for number, piece in enumerate(_pieces(text, limit)):
            key = self._key(f"{what}{number}")
            sent &= await tell_customer(
                self.session, self.ticket, self.tenant, piece, key=key, now=self.now
            )
        return sent

    async def _outside_window(self, address: str) -> bool:
        """True when WhatsApp takes only templates now: the customer last wrote 24 h ago."""
        if self.ticket.channel != Channel.WHATSAPP:
            return False
        last = (await last_contact(self.session, self.ticket, address)).at
        return last is not None and self.now - last >= WINDOW

    async def _reachable(self) -> bool:
        """Refuse before anything changes if the customer cannot be written to now; True
        when what is sent will be held until they answer the template's invitation."""
        address = await customer_address(self.session, self.ticket)
        if address is None:
            raise Refused(f"No address is known for the customer of {self.ticket.ref}.")
        late = await self._outside_window(address)
        if late and "update" not in self.tenant.whatsapp_templates:
            raise Refused(
                f"Not sent: the customer of {self.ticket.ref} last wrote over 24 hours ago, and "
                "WhatsApp then takes only approved templates; none ('update') is configured. "
                "Nothing was changed."
            )
        return late

    def _language(self) -> str:
        return customer_language(self.ticket, self.tenant)

    def _home_note(self, text: str) -> None:
        """Tell the ticket's topic what happened when it was done elsewhere."""
        thread = self.ticket.staff_thread_id
        chat = self.tenant.channels.staff_chat_id
        if thread is None or chat is None:
            return
        if self.turn.chat == chat and self.turn.inbound.thread_id == thread:
            return
        self.turn.say(text, place=Place(chat, thread), ticket=self.ticket)

    async def claim(self) -> None:
        self._open()
        ticket = self.ticket
        before = ticket.assignee_user_id
        ticket.assignee_user_id = self.turn.user
        ticket.assignee_name = self.turn.name
        data: dict[str, Any] = {"assignee": self.turn.user, "from": before}
        if ticket.status == TicketStatus.OPEN:
            ticket.status = TicketStatus.IN_PROGRESS
            data["status"] = str(TicketStatus.IN_PROGRESS)
        await self._event("claimed", data)
        if self.turn.inbound.callback_id is None:
            self.turn.say(f"✋ {_e(ticket.ref)} is now yours, {_e(self.turn.name)}.", ticket=ticket)

    async def reply(self, text: str, media: Sequence[Media]) -> None:
        self._open()
        held = await self._reachable()
        ticket, language = self.ticket, self._language()
        files = [
            await self.desk.store_file(self.session, ticket, m, user_id=self.turn.user)
            for m in media
        ]
        if text:
            message = translate(
                language, STAFF_MESSAGE, business=self.tenant.name, ref=ticket.ref, text=text
            )
            await self._tell(message, "text")
        delivered = [
            await self._deliver(stored, sent, number)
            for number, (stored, sent) in enumerate(zip(files, media, strict=True))
        ]
        data: dict[str, Any] = {"text": text, "files": delivered}
        asking = bool(text) and ticket.status in (TicketStatus.OPEN, TicketStatus.IN_PROGRESS)
        if asking:
            ticket.status = TicketStatus.AWAITING_REQUESTER
            data["status"] = str(TicketStatus.AWAITING_REQUESTER)
        await self._event("staff_reply", data)
        what = " and ".join(
            part
            for part in (
                "your message" if text else "",
                f"{len(files)} file{'s' if len(files) != 1 else ''}" if files else "",
            )
            if part
        )
        waiting = " Waiting for their answer." if asking else ""
        if held:
            self.turn.say(
                f"⏳ Held {what} for the customer of {_e(ticket.ref)}: they last wrote over 24 "
                "hours ago, when WhatsApp takes only approved templates. They have been "
                f"invited back; it goes out when they answer.{waiting}",
                ticket=ticket,
            )
            return
        self.turn.say(f"↩️ Sent {what} to the customer of {_e(ticket.ref)}.{waiting}", ticket=ticket)

    async def _deliver(self, stored: DeskFile, sent: Media, number: int) -> dict[str, Any]:
        """The file to the customer: the same photo or document on Telegram (a file id works
        only with the method of its kind), a download link on WhatsApp."""
        ticket, language = self.ticket, self._language()
        record: dict[str, Any] = {"file": stored.id, "name": stored.name, "size": stored.size}
        if ticket.channel == Channel.TELEGRAM:
            address = await customer_address(self.session, ticket)
            assert address is not None
            photo = sent.file_name is None and stored.content_type.startswith("image/")
            method, key = ("send_photo", "photo") if photo else ("send_document", "document")
            outbox.enqueue(
                self.session,
                channel=Channel.TELEGRAM,
                recipient=address,
                tenant=ticket.tenant,
                ticket_id=ticket.id,
                payload={
                    "method": method,
                    key: stored.telegram_file_id,
                    "caption": translate(
                        language, FILE_CAPTION, business=self.tenant.name, ref=ticket.ref
                    ),
                },
                dedupe_key=self._key(f"file{number}"),
            )
            return record
        if not self.desk.public_url:
            log.warning("PUBLIC_BASE_URL unset: the download link of %s is relative", ticket.ref)
        token, link = await self.desk.new_link(self.session, stored, self.now)
        notice = translate(
            language,
            FILE_LINK,
            business=self.tenant.name,
            ref=ticket.ref,
            date=customer_date(link.expires_at, self.tenant, language),
            count=link.max_downloads,
        )
        await self._tell(f"{notice}\n{self.desk.link_url(token)}", f"link{number}")
        record["link"] = link.id
        return record

    async def note(self, text: str) -> None:
        await self._event("note", {"text": text})
        self.turn.say(f"📝 Note kept with {_e(self.ticket.ref)} (the customer does not see it).")
        self._home_note(f"📝 Note by {_e(self.turn.name)}: {_e(text)}")

    async def resolve(self, note: str) -> None:
        self._open()
        ticket = self.ticket
        if ticket.status == TicketStatus.AWAITING_VERIFICATION:
            raise Refused(
                f"{ticket.ref} waits for the customer to prove who they are: reject it, or wait."
            )
        await self._reachable()
        language = self._language()
        text = (
            translate(language, RESOLVED_NOTE, ref=ticket.ref, business=self.tenant.name, note=note)
            if note
            else translate(language, RESOLVED, ref=ticket.ref)
        )
        await self._tell(text, "resolved")
        ticket.status = TicketStatus.RESOLVED
        ticket.closed_at = self.now
        await self._event("resolved", {"status": str(TicketStatus.RESOLVED), "note": note})
        self.turn.say(f"✅ {_e(ticket.ref)} resolved; the customer has been told.", ticket=ticket)
        self._home_note(f"✅ Resolved by {_e(self.turn.name)}.")

    async def reject(self, reason: str) -> None:
        self._open()
        ticket = self.ticket
        await self._reachable()
        language = self._language()
        regulator = self.tenant.regulator
        if regulator is not None:
            contact = regulator.url or regulator.email
            authority = f"{regulator.name} ({contact})" if contact else regulator.name
        else:
            authority = translate(language, REGULATOR_UNNAMED)
        text = translate(language, REJECTED, ref=ticket.ref, reason=reason, regulator=authority)
        await self._tell(text, "rejected")
        ticket.status = TicketStatus.REJECTED
        ticket.closed_at = self.now
        await self._event("rejected", {"status": str(TicketStatus.REJECTED), "reason": reason})
        self.turn.say(
            f"⛔ {_e(ticket.ref)} rejected; the customer has the reason and where to complain.",
            ticket=ticket,
        )
        self._home_note(f"⛔ Rejected by {_e(self.turn.name)}: {_e(reason)}")

    async def extend(self, text: str) -> None:
        by, reason = _duration_and_reason(text)
        if not reason:
            raise Refused(f"An extension needs a reason. Usage: {USAGE['extend']}")
        try:
            extension = await extend_ticket(
                self.session,
                self.ticket,
                self.tenant,
                reason=reason,
                actor=self.turn.actor,
                now=self.now,
                by=by,
            )
        except ExtensionRefused as refused:
            raise Refused(f"Not extended: {_e(refused)}") from None
        extension.event.data = {**extension.event.data, "staff_name": self.turn.name}
        self.session.add(extension.event)
        await self.desk.refresh(self.session, self.ticket, self.now)
        told = "the customer has been told" if extension.requester_notified else "customer not told"
        due = staff_time(extension.new_due, self.tenant)
        self.turn.say(
            f"⏳ {_e(self.ticket.ref)} is now due {_e(due)}; {told}.",
            ticket=self.ticket,
        )


def _duration_and_reason(text: str) -> tuple[Duration | None, str]:
    """'10 business days the export is large' -> (10 business days, 'the export is large')."""
    words = text.split()
    for size in (3, 2):
        if len(words) > size:
            try:
                return parse_duration(" ".join(words[:size])), " ".join(words[size:])
            except ValueError:
                continue
    return None, text.strip()


# --- the customer's side ----------------------------------------------------------------


class _CustomerTurn:
    """A customer's message for a ticket staff are working on: to staff, and acknowledged."""

    def __init__(
        self,
        desk: Desk,
        session: AsyncSession,
        tenant: Tenant,
        ticket: Ticket,
        inbound: Inbound,
        now: datetime,
    ) -> None:
        self.desk, self.session, self.tenant, self.ticket = desk, session, tenant, ticket
        self.inbound, self.now = inbound, now
        self.sent = 0

    def _key(self) -> str:
        self.sent += 1
        return f"desk:{self.inbound.channel}:{self.inbound.provider_id}:{self.sent}"

    async def run(self) -> None:
        ticket, inbound = self.ticket, self.inbound
        assert ticket.id is not None
        quiet = await self._quiet()
        answered = ticket.status == TicketStatus.AWAITING_REQUESTER
        files = await self.desk.keep_customer_media(self.session, ticket, inbound)
        data: dict[str, Any] = {"text": inbound.text, "files": files}
        if answered:
            ticket.status = TicketStatus.IN_PROGRESS
            data["status"] = str(TicketStatus.IN_PROGRESS)
        ticket.updated_at = self.now
        self.session.add(ticket)
        await add_event(
            self.session, ticket, actor="customer", kind="customer_message", at=self.now, data=data
        )
        if answered and self.tenant.pause_while_awaiting_requester:
            events = await events_of(self.session, ticket.id)
            await resync_due(self.session, ticket, self.tenant, events, now=self.now)
        self._to_staff(files)
        if answered or quiet:
            self._acknowledge(ANSWER_RECEIVED if answered else MESSAGE_RECEIVED)
        await self.desk.refresh(self.session, ticket, self.now)
        log.info("customer message for %s relayed to staff", ticket.ref)

    async def _quiet(self) -> bool:
        """No message from the customer on this ticket for a while: worth an acknowledgement."""
        result = await self.session.exec(
            select(sa.func.max(TicketEvent.at)).where(
                TicketEvent.ticket_id == self.ticket.id, TicketEvent.kind == "customer_message"
            )
        )
        last = result.one()
        return last is None or self.now - utc(last) >= ACK_QUIET

    def _home(self) -> Place | None:
        chat = self.tenant.channels.staff_chat_id
        ticket = self.ticket
        if chat is None:
            return Place(ticket.assignee_user_id) if ticket.assignee_user_id else None
        return Place.of_ticket(ticket, chat)

    def _to_staff(self, files: list[dict[str, Any]]) -> None:
        home = self._home()
        if home is None:
            log.warning("customer message for %s has no staff chat to go to", self.ticket.ref)
            return
        ref = _e(self.ticket.ref)
        header = f"💬 <b>{ref}</b> · the customer wrote:\n"
        for piece in _pieces(self.inbound.text, TELEGRAM_PIECE):
            self._post(home, {"text": header + _e(piece), "parse_mode": "HTML"})
        for media, kept in zip(self.inbound.media, files, strict=True):
            caption = f"📎 <b>{ref}</b> · from the customer"
            image = (media.content_type or "").startswith("image/")
            if self.inbound.channel is Channel.TELEGRAM:  # Telegram's own file id: resend it
                photo = image and media.file_name is None
                method, key = ("send_photo", "photo") if photo else ("send_document", "document")
                payload = {"method": method, key: media.url}
            elif kept.get("kept"):  # downloaded with Twilio's credentials: upload our copy
                photo = media.content_type in ("image/jpeg", "image/png")
                payload = {
                    "method": "send_photo" if photo else "send_document",
                    "stored_file": kept["file"],
                }
            else:
                why = _e(kept.get("why") or "")
                self._post(
                    home,
                    {
                        "text": f"📎 <b>{ref}</b> · the customer sent a file we could not "
                        f"download ({why}).",
                        "parse_mode": "HTML",
                    },
                )
                continue
            self._post(home, {**payload, "caption": caption, "parse_mode": "HTML"})

    def _post(self, home: Place, payload: dict[str, Any]) -> None:
        post_to_staff(
            self.session,
            home,
            payload,
            tenant=self.tenant.slug,
            ticket_id=self.ticket.id,
            dedupe_key=self._key(),
        )

    def _acknowledge(self, message: str) -> None:
        language = customer_language(self.ticket, self.tenant)
        payload: dict[str, Any] = {"text": translate(language, message, ref=self.ticket.ref)}
        if self.inbound.channel is Channel.WHATSAPP:
            numbers = self.tenant.channels.whatsapp_numbers
            payload["from"] = self.inbound.to or f"whatsapp:{numbers[0]}"
        outbox.enqueue(
            self.session,
            channel=self.inbound.channel,
            recipient=self.inbound.sender,
            tenant=self.tenant.slug,
            ticket_id=self.ticket.id,
            payload=payload,
            dedupe_key=self._key(),
        )
