"""The intake wiring: runs the pure dialogue (`bot.conversation`) for one stored message and
performs its effects in the same transaction — tickets, codes, consent, replies in the outbox.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from babel.dates import format_time
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import verification, window
from bot.clock import add_duration
from bot.conversation import (
    AttachMedia,
    Button,
    CancelOutcome,
    CancelTicket,
    CheckCode,
    CodeCooldown,
    CodeExpired,
    CodeLocked,
    CodeSent,
    CodeWrong,
    Context,
    ConversationState,
    Effect,
    Event,
    FileTicket,
    Message,
    OptIn,
    OptOut,
    Reply,
    SendCode,
    ShowStatus,
    StatusItem,
    StatusLoaded,
    TicketCancelled,
    TicketFiled,
    Verified,
    advance,
    render,
)
from bot.desk import Desk, Place, post_to_staff
from bot.i18n import _, guess_language, translate
from bot.logs import mask_email
from bot.mail import EmailSender
from bot.messages import Inbound
from bot.reminders import customer_date, tenant_calendar
from bot.tenants import Tenant, Tenants
from storage import outbox, people, tickets
from storage.enums import Channel, RequestType, TicketStatus
from storage.models import Conversation, Ticket

log = logging.getLogger(__name__)

ROUTER = ""  # the Telegram conversation row that remembers which business a chat talks to
CHOOSE_BUSINESS = _("Which business would you like to contact?\n{options}")
BUSINESS_LINE = _("{number}. {label}")


@dataclass
class Intake:
    """Customer messages in, dialogue effects out; one call per stored inbound message."""

    tenants: Tenants
    mail: EmailSender
    secret: bytes
    desk: Desk | None = None  # the staff desk: ticket cards, and answers staff wait for

    async def handle(self, session: AsyncSession, inbound: Inbound, now: datetime) -> None:
        tenant, picked = await self._tenant_of(session, inbound, now)
        if tenant is None:
            return
        if inbound.channel is Channel.WHATSAPP:
            await window.release_held(
                session, recipient=inbound.sender, tenant=tenant.slug, now=now
            )
        conversation = await people.conversation_for_update(
            session,
            channel=inbound.channel,
            address=inbound.sender,
            tenant=tenant.slug,
            now=now,
        )
        if self.desk is not None and await self.desk.from_customer(
            session, tenant, conversation, inbound, now
        ):  # a message for a ticket staff work on, that the dialogue would not act on
            _heard(conversation, inbound, now)
            session.add(conversation)
            return
        run = _Run(self, session, tenant, conversation, inbound, now)
        state = ConversationState.from_json(conversation.state)
        if inbound.start_param is not None or picked:
            inbound = _as_greeting(inbound)  # the message chose the business, nothing more
        state = await run.step(state, Message.from_inbound(inbound))
        conversation.state = state.to_json()
        conversation.step = state.step
        conversation.language = state.language
        _heard(conversation, inbound, now)
        session.add(conversation)

    async def _tenant_of(
        self, session: AsyncSession, inbound: Inbound, now: datetime
    ) -> tuple[Tenant | None, bool]:
        """WhatsApp: the number written to. Telegram: the /start parameter, the business
        chosen before, the only business there is, or a choice offered now (None). True
        when this very message was the choice (a number or a button from the offer)."""
        if inbound.channel is Channel.WHATSAPP:
            return (self.tenants.by_slug(inbound.tenant) if inbound.tenant else None), False
        router = await people.conversation_for_update(
            session, channel=inbound.channel, address=inbound.sender, tenant=ROUTER, now=now
        )
        chosen = _chosen_tenant(self.tenants, inbound, router)
        if chosen is not None:
            picked = not inbound.start_param
            if router.state.get("current") != chosen.slug:
                router.state = {"current": chosen.slug}
                router.updated_at = now
                session.add(router)
            return chosen, picked
        current = router.state.get("current")
        if isinstance(current, str) and current in self.tenants:
            return self.tenants.by_slug(current), False
        if len(self.tenants) == 1:
            return next(iter(self.tenants)), False
        self._offer_businesses(session, inbound, router, now)
        return None, False

    def _offer_businesses(
        self, session: AsyncSession, inbound: Inbound, router: Conversation, now: datetime
    ) -> None:
        language = guess_language(inbound.text, hint=inbound.language_code)
        options = "\n".join(
            translate(language, BUSINESS_LINE, number=n, label=tenant.name)
            for n, tenant in enumerate(self.tenants, start=1)
        )
        keyboard = [
            [{"text": tenant.name, "callback_data": f"tenant:{tenant.slug}"}]
            for tenant in self.tenants
        ]
        outbox.enqueue(
            session,
            channel=Channel.TELEGRAM,
            recipient=inbound.sender,
            payload={
                "text": translate(language, CHOOSE_BUSINESS, options=options),
                "reply_markup": {"inline_keyboard": keyboard},
            },
            dedupe_key=f"reply:{inbound.channel}:{inbound.provider_id}:choose",
        )
        router.state = {"choosing": True}
        router.updated_at = now
        session.add(router)


def _heard(conversation: Conversation, inbound: Inbound, now: datetime) -> None:
    """The customer wrote: when (WhatsApp's 24-hour window), and on WhatsApp to which of the
    business's numbers, the one later messages go from."""
    conversation.last_inbound_at = inbound.received_at
    if inbound.channel is Channel.WHATSAPP and inbound.to:
        conversation.written_to = inbound.to
    conversation.updated_at = now


def _chosen_tenant(tenants: Tenants, inbound: Inbound, router: Conversation) -> Tenant | None:
    if inbound.start_param:
        return tenants.for_telegram_start(inbound.start_param)
    data = inbound.callback_data or ""
    if data.startswith("tenant:") and data[7:] in tenants:
        return tenants.by_slug(data[7:])
    if router.state.get("choosing") and inbound.text.strip().isdigit():
        number = int(inbound.text.strip())
        if 1 <= number <= len(tenants):
            return list(tenants)[number - 1]
    return None


def _as_greeting(inbound: Inbound) -> Inbound:
    """`/start <business>`, or the choice of a business, opens the dialogue like a greeting."""
    return replace(inbound, text="hi", start_param=None, callback_data=None)


class _Run:
    """One message's pass through the dialogue: effects performed, answers fed back."""

    def __init__(
        self,
        intake: Intake,
        session: AsyncSession,
        tenant: Tenant,
        conversation: Conversation,
        inbound: Inbound,
        now: datetime,
    ) -> None:
        self.intake = intake
        self.session = session
        self.tenant = tenant
        self.conversation = conversation
        self.inbound = inbound
        self.now = now
        self.ctx = Context.for_tenant(tenant, now=now)
        self.replies = 0

    async def step(self, state: ConversationState, event: Event) -> ConversationState:
        transition = advance(state, event, self.ctx)
        state = transition.state
        for effect in transition.effects:
            answer = await self.perform(effect, state)
            if answer is not None:
                state = await self.step(state, answer)
        return state

    async def perform(self, effect: Effect, state: ConversationState) -> Event | None:
        language = state.language or self.tenant.default_language
        match effect:
            case Reply():
                self.reply(effect, language)
                return None
            case FileTicket():
                return await self.file(effect, language)
            case SendCode():
                return await self.send_code(effect, language)
            case CheckCode():
                return await self.check_code(effect, language)
            case OptOut():
                await self.opt_out(effect)
                return None
            case OptIn():
                await self.opt_in(effect)
                return None
            case ShowStatus():
                return await self.status(language)
            case CancelTicket():
                return await self.cancel(effect)
            case AttachMedia():
                await self.attach(effect)
                return None
        raise AssertionError(f"unhandled effect {effect!r}")

    # --- replies ---------------------------------------------------------------------

    def reply(self, reply: Reply, language: str) -> None:
        self.replies += 1
        payload: dict[str, Any] = {"text": render(reply.message, language)}
        if self.inbound.channel is Channel.WHATSAPP:
            payload["from"] = self._whatsapp_from()
        elif reply.buttons:
            payload["reply_markup"] = _keyboard(reply.buttons, language)
        outbox.enqueue(
            self.session,
            channel=self.inbound.channel,
            recipient=self.inbound.sender,
            tenant=self.tenant.slug,
            payload=payload,
            dedupe_key=f"reply:{self.inbound.channel}:{self.inbound.provider_id}:{self.replies}",
        )

    def _whatsapp_from(self) -> str:
        return self.inbound.to or f"whatsapp:{self.tenant.channels.whatsapp_numbers[0]}"

    # --- requests --------------------------------------------------------------------

    async def _requester_id(self) -> int:
        if self.conversation.requester_id is not None:
            return self.conversation.requester_id
        requester = await people.requester_for(
            self.session,
            tenant=self.tenant.slug,
            kind=str(self.inbound.channel),
            value=self.inbound.sender,
            now=self.now,
            display_name=self.inbound.display_name,
        )
        assert requester.id is not None
        self.conversation.requester_id = requester.id
        return requester.id

    def _due(self, kind: RequestType, start: datetime) -> datetime:
        duration = self.tenant.deadline_for(kind)
        assert duration is not None, f"{self.tenant.slug} does not offer {kind}"
        return add_duration(start, duration, tenant_calendar(self.tenant))

    async def file(self, effect: FileTicket, language: str) -> Event:
        requester_id = await self._requester_id()
        received = self.inbound.received_at
        starts_now = not effect.needs_verification or self.tenant.clock_starts == "received"
        status = (
            TicketStatus.AWAITING_VERIFICATION if effect.needs_verification else TicketStatus.OPEN
        )
        ticket = await tickets.create_ticket(
            self.session,
            tenant=self.tenant.slug,
            ref_prefix=self.tenant.ref_prefix,
            kind=effect.kind,
            channel=self.inbound.channel,
            received_at=received,
            status=status,
            language=language,
            requester_id=requester_id,
            details=effect.details or None,
            due_at=self._due(effect.kind, received) if starts_now else None,
            clock_started_at=received if starts_now else None,
        )
        if self.inbound.channel is Channel.WHATSAPP:
            # Writing from the number proves the number (not the person behind an account).
            await people.prove_identity(
                self.session,
                requester_id=requester_id,
                tenant=self.tenant.slug,
                kind="whatsapp",
                value=self.inbound.sender,
                now=self.now,
            )
        await self._card(ticket)
        log.info("ticket %s filed via %s", ticket.ref, ticket.channel)
        due = customer_date(ticket.due_at, self.tenant, language) if ticket.due_at else None
        return TicketFiled(ref=ticket.ref, due=due)

    async def _own_ticket(self, ref: str) -> Ticket | None:
        ticket = await tickets.by_ref(self.session, ref.upper())
        if ticket is None or ticket.tenant != self.tenant.slug:
            return None
        if ticket.requester_id != await self._requester_id():
            return None
        return ticket

    async def send_code(self, effect: SendCode, language: str) -> Event:
        ticket = await self._own_ticket(effect.ref)
        if ticket is None or ticket.status != TicketStatus.AWAITING_VERIFICATION:
            return TicketCancelled(ref=effect.ref, outcome=CancelOutcome.CLOSED)
        assert ticket.id is not None
        try:
            result = await verification.issue_code(
                self.session,
                ticket_id=ticket.id,
                email=effect.email,
                key=self.intake.secret,
                now=self.now,
            )
        except ValueError:
            return CodeExpired()
        match result.status:
            case verification.IssueStatus.COOLDOWN:
                return CodeCooldown(seconds=result.retry_after)
            case verification.IssueStatus.LOCKED:
                assert result.locked_until is not None
                return CodeLocked(until=self._when(result.locked_until, language))
            case verification.IssueStatus.ALREADY_VERIFIED:
                return Verified(ref=ticket.ref, due=self._due_text(ticket, language))
        assert result.code is not None
        address = verification.normalise_email(effect.email) or effect.email
        outbox.enqueue(
            self.session,
            channel="email",
            recipient=address,
            tenant=self.tenant.slug,
            ticket_id=ticket.id,
            payload={
                "code": self.intake.mail.seal_code(result.code),
                "language": language,
                "business": self.tenant.name,
                "ref": ticket.ref,
            },
        )
        log.info("verification code for %s queued to %s", ticket.ref, mask_email(address))
        return CodeSent()

    async def check_code(self, effect: CheckCode, language: str) -> Event:
        ticket = await self._own_ticket(effect.ref)
        if ticket is None or TicketStatus(ticket.status).is_closed:
            return TicketCancelled(ref=effect.ref, outcome=CancelOutcome.CLOSED)
        assert ticket.id is not None
        result = await verification.check_code(
            self.session,
            ticket_id=ticket.id,
            code=effect.code,
            key=self.intake.secret,
            now=self.now,
        )
        match result.status:
            case verification.CheckStatus.WRONG:
                return CodeWrong(tries_left=result.tries_left)
            case verification.CheckStatus.LOCKED:
                assert result.locked_until is not None
                return CodeLocked(until=self._when(result.locked_until, language))
            case verification.CheckStatus.EXPIRED | verification.CheckStatus.NO_CODE:
                return CodeExpired()
            case verification.CheckStatus.MALFORMED:
                return CodeWrong(tries_left=verification.MAX_ATTEMPTS)
        if ticket.status == TicketStatus.AWAITING_VERIFICATION:
            await self._open_verified(ticket, result.email)
        return Verified(ref=ticket.ref, due=self._due_text(ticket, language))

    async def _open_verified(self, ticket: Ticket, email: str | None) -> None:
        ticket.status = TicketStatus.OPEN
        ticket.verified_at = self.now
        ticket.updated_at = self.now
        if ticket.due_at is None:
            ticket.clock_started_at = self.now
            ticket.due_at = self._due(RequestType(ticket.kind), self.now)
        self.session.add(ticket)
        await tickets.add_event(
            self.session,
            ticket,
            actor="customer",
            kind="opened",
            at=self.now,
            data={"status": str(TicketStatus.OPEN), "due_at": ticket.due_at.isoformat()},
        )
        if email and ticket.requester_id is not None:
            await people.prove_identity(
                self.session,
                requester_id=ticket.requester_id,
                tenant=self.tenant.slug,
                kind="email",
                value=email,
                now=self.now,
            )
        await self._card(ticket)

    async def opt_out(self, effect: OptOut) -> None:
        requester_id = await self._requester_id()
        # Cookies: the email or phone as given. Unverified, so it is not made a contact of the
        # requester (it may be someone else's; a verified contact must not be taken over).
        identity = effect.identity or None
        ticket = await tickets.create_ticket(
            self.session,
            tenant=self.tenant.slug,
            ref_prefix=self.tenant.ref_prefix,
            kind=effect.kind,
            channel=self.inbound.channel,
            received_at=self.inbound.received_at,
            status=TicketStatus.RESOLVED,
            language=self.conversation.language or self.tenant.default_language,
            requester_id=requester_id,
            details=_opt_out_details(effect),
            due_at=self.inbound.received_at,
            clock_started_at=self.inbound.received_at,
        )
        ticket.closed_at = self.now
        categories = effect.categories or ("marketing",)
        for category in categories:
            name = (
                category if effect.kind == RequestType.MARKETING_OPT_OUT else f"cookies:{category}"
            )
            await people.record_consent(
                self.session,
                tenant=self.tenant.slug,
                requester_id=requester_id,
                channel=self.inbound.channel,
                address=self.inbound.sender,
                category=name,
                granted=False,
                words=effect.words,
                ticket_id=ticket.id,
                now=self.now,
                identity=identity,
            )
        data: dict[str, Any] = {
            "status": str(TicketStatus.RESOLVED),
            "categories": list(categories),
        }
        if effect.kind == RequestType.COOKIE_OPT_OUT:
            data["identity"] = identity
        await tickets.add_event(
            self.session, ticket, actor="system", kind="resolved", at=self.now, data=data
        )
        log.info("opt-out %s recorded as %s", effect.kind, ticket.ref)

    async def opt_in(self, effect: OptIn) -> None:
        await people.record_consent(
            self.session,
            tenant=self.tenant.slug,
            requester_id=await self._requester_id(),
            channel=self.inbound.channel,
            address=self.inbound.sender,
            category="marketing",
            granted=True,
            words=effect.words,
            ticket_id=None,
            now=self.now,
        )

    async def status(self, language: str) -> Event:
        found = await people.tickets_of(
            self.session, requester_id=await self._requester_id(), tenant=self.tenant.slug
        )
        return StatusLoaded(
            items=tuple(
                StatusItem(
                    ref=t.ref,
                    kind=RequestType(t.kind),
                    status=TicketStatus(t.status),
                    due=self._due_text(t, language),
                )
                for t in found
            )
        )

    async def cancel(self, effect: CancelTicket) -> Event:
        ticket = await self._own_ticket(effect.ref)
        if ticket is None:
            return TicketCancelled(ref=effect.ref, outcome=CancelOutcome.NOT_FOUND)
        if TicketStatus(ticket.status).is_closed:
            return TicketCancelled(ref=ticket.ref, outcome=CancelOutcome.CLOSED)
        seen_by_staff = ticket.status != TicketStatus.AWAITING_VERIFICATION
        ticket.status = TicketStatus.CANCELLED
        ticket.closed_at = self.now
        ticket.updated_at = self.now
        self.session.add(ticket)
        await tickets.add_event(
            self.session,
            ticket,
            actor="customer",
            kind="cancelled",
            at=self.now,
            data={"status": str(TicketStatus.CANCELLED)},
        )
        await self._card(ticket)
        if seen_by_staff:
            ref = html.escape(ticket.ref)
            self._tell_staff(
                ticket,
                f"🚫 <b>{ref}</b> · the customer withdrew this request; it is now cancelled.",
            )
        log.info("ticket %s withdrawn by the customer", ticket.ref)
        return TicketCancelled(ref=ticket.ref, outcome=CancelOutcome.CANCELLED)

    async def attach(self, effect: AttachMedia) -> None:
        ticket = await self._own_ticket(effect.ref)
        if ticket is None:
            return
        if self.intake.desk is not None:  # downloaded and kept sealed with the ticket
            files = await self.intake.desk.customer_files(
                self.session, self.tenant, ticket, self.inbound, self.now
            )
        else:
            files = [
                {"content_type": m.content_type, "name": m.file_name, "kept": False}
                for m in self.inbound.media
            ]
        await tickets.add_event(
            self.session,
            ticket,
            actor="customer",
            kind="attachment",
            at=self.now,
            data={"channel": str(self.inbound.channel), "files": files},
        )

    # --- staff and dates ---------------------------------------------------------------

    async def _card(self, ticket: Ticket) -> None:
        """Show staff the ticket: its card in the staff chat is posted or edited (bot.desk)."""
        if self.intake.desk is not None:
            await self.intake.desk.ticket_changed(self.session, ticket, self.now)

    def _tell_staff(self, ticket: Ticket, text: str) -> None:
        """A line in the ticket's place in the staff chat (its topic, or under its card):
        a card edit alone goes unnoticed."""
        chat = self.tenant.channels.staff_chat_id
        if self.intake.desk is None or chat is None:
            return
        post_to_staff(
            self.session,
            Place.of_ticket(ticket, chat),
            {"text": text, "parse_mode": "HTML"},
            tenant=self.tenant.slug,
            ticket_id=ticket.id,
            dedupe_key=f"staff:{self.inbound.channel}:{self.inbound.provider_id}:{ticket.ref}",
        )

    def _due_text(self, ticket: Ticket, language: str) -> str | None:
        return customer_date(ticket.due_at, self.tenant, language) if ticket.due_at else None

    def _when(self, moment: datetime, language: str) -> str:
        return format_time(moment.astimezone(self.tenant.zone), "short", locale=language)


def _opt_out_details(effect: OptOut) -> str | None:
    """What staff and the admin page read on the resolved ticket: the categories and, for
    cookies, whom the business is to apply them to on its website."""
    categories = ", ".join(effect.categories)
    if effect.kind != RequestType.COOKIE_OPT_OUT:
        return categories or None
    if not effect.identity:
        return f"{categories}\nfor: no email or phone number given"
    kind = "email" if "@" in effect.identity else "phone"
    return f"{categories}\nfor {kind}: {effect.identity}"


def _keyboard(buttons: tuple[Button, ...], language: str) -> dict[str, Any]:
    rows = []
    for button in buttons:
        label = button.label if isinstance(button.label, str) else render(button.label, language)
        rows.append([{"text": label[:64], "callback_data": button.data[:64]}])
    return {"inline_keyboard": rows}
