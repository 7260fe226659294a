"""Intake transcripts through the real webhooks, the real twilio and python-telegram-bot
clients against the loopback fakes, and a real SMTP server for the codes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from babel.dates import format_date
from sqlmodel import select

from bot import accounts
from bot.i18n import FSI, PDI
from bot.tenants import load_tenants
from storage.db import create_engine, session_factory
from storage.enums import TicketStatus
from storage.models import ConsentRecord, Conversation, Suppression, Ticket, TicketEvent
from tests.conftest import TENANTS_DIR
from tests.fakes.twilio_api import inbound_whatsapp_form
from tests.service import Service, eventually, running_service
from tests.test_mail import Collector, smtp_server

OD_NUMBER = "whatsapp:+14155238881"
CUSTOMER = "whatsapp:+923001112233"
OD_STAFF_CHAT = -1000000000001
KARACHI = ZoneInfo("Asia/Karachi")


class WhatsAppCustomer:
    """Types into WhatsApp and reads what comes back."""

    def __init__(self, svc: Service, number: str = CUSTOMER, to: str = OD_NUMBER) -> None:
        self.svc, self.number, self.to = svc, number, to

    def inbox(self) -> list[str]:
        return [c.params["Body"] for c in self.svc.twilio.sent_messages(to=self.number)]

    async def say(self, text: str) -> str:
        """Send `text`; the bot's (last) answer to it."""
        before = len(self.inbox())
        response = await self.svc.post_whatsapp(
            inbound_whatsapp_form(from_=self.number, to=self.to, body=text)
        )
        assert response.status == 200
        await eventually(lambda: len(self.inbox()) > before)
        return self.inbox()[-1]


class TelegramCustomer:
    def __init__(self, svc: Service, chat_id: int, language_code: str = "en") -> None:
        self.svc, self.chat_id, self.language_code = svc, chat_id, language_code

    def inbox(self) -> list[str]:
        return [c.params["text"] for c in self.svc.telegram.sent_messages(chat_id=self.chat_id)]

    async def say(self, text: str) -> str:
        before = len(self.inbox())
        update = self.svc.telegram.message_update(
            self.chat_id, text, language_code=self.language_code
        )
        assert (await self.svc.post_telegram(update)).status == 200
        await eventually(lambda: len(self.inbox()) > before)
        return self.inbox()[-1]


@asynccontextmanager
async def desk(database_url: str) -> AsyncIterator[tuple[Service, Collector]]:
    with smtp_server() as (mailbox, port):
        async with running_service(database_url, smtp_url=f"smtp://127.0.0.1:{port}") as svc:
            yield svc, mailbox


async def _rows(database_url: str, model: type) -> list:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            return list(await session.exec(select(model)))
    finally:
        await engine.dispose()


def _code_in(mailbox: Collector, to: str) -> str:
    mails = [m for m in mailbox.messages if to in m.rcpt_tos]
    assert mails, f"no mail to {to}"
    body = mails[-1].message.get_body(preferencelist=("plain",))
    assert body is not None
    match = re.search(r"\b(\d{6})\b", body.get_content())
    assert match
    return match.group(1)


def _due_date(due_at: datetime, language: str) -> str:
    """A 7-business-day deadline as the customer reads it: the long date in Karachi, no time
    (it ends at 23:59:59 there)."""
    local = due_at.astimezone(KARACHI)
    assert local.time().replace(microsecond=0) == time(23, 59, 59), local
    return format_date(local.date(), "long", locale=language)


def _staff_texts(svc: Service) -> list[str]:
    return [c.params.get("text", "") for c in svc.telegram.sent_messages(chat_id=OD_STAFF_CHAT)]


async def _file_verified_erasure(customer: WhatsAppCustomer, mailbox: Collector, email: str) -> str:
    """Ask for erasure, verify by the mailed code; the reference."""
    await customer.say("Please delete my data")
    await customer.say("yes")
    await customer.say(email)
    await eventually(lambda: [m for m in mailbox.messages if email in m.rcpt_tos])
    verified = await customer.say(_code_in(mailbox, email))
    ref = re.search(r"OD-\d{4}-\d{5}", verified)
    assert ref, verified
    return ref.group(0)


async def _api_token(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        return await accounts.create_token(session_factory(engine), name="crm")
    finally:
        await engine.dispose()


async def _suppressions(svc: Service, token: str) -> list[tuple[str, str, str]]:
    """What the business's systems see at GET /api/v1/suppressions."""
    response = await svc.http.get(
        svc.url + "/api/v1/suppressions?tenant=optician-dynamics",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 200
    items = (await response.json())["items"]
    return [(i["channel"], i["address"], i["category"]) for i in items]


async def test_whatsapp_erasure_request_is_verified_and_filed(database_url: str) -> None:
    async with desk(database_url) as (svc, mailbox):
        customer = WhatsAppCustomer(svc)
        assert "Is that right" in await customer.say("Please delete my data")
        asked = await customer.say("yes")
        assert "email" in asked.lower()
        sent = await customer.say("amina@example.com")
        await eventually(lambda: mailbox.messages)
        code = _code_in(mailbox, "amina@example.com")
        assert code not in sent
        filed = await customer.say(code)
        ref = re.search(r"OD-2026-\d{5}|OD-\d{4}-\d{5}", filed)
        assert ref, filed
        tickets = await _rows(database_url, Ticket)
        assert len(tickets) == 1
        ticket = tickets[0]
        assert ticket.ref == ref.group(0)
        assert ticket.kind == "erasure" and ticket.status == TicketStatus.OPEN
        assert ticket.verified_at is not None and ticket.due_at is not None
        # The answer to the code gives the reference and the due date, in Karachi time.
        assert filed == (
            "Thank you, we have confirmed it is you. We are working on your request "
            f"{ticket.ref} and will answer by {_due_date(ticket.due_at, 'en')}."
        )
        events = [e.kind for e in await _rows(database_url, TicketEvent)]
        assert events[0] == "created" and "verified" in events and "opened" in events
        # Later messages (staff, reminders) go from the number the customer wrote to.
        (conversation,) = await _rows(database_url, Conversation)
        assert conversation.written_to == OD_NUMBER
        # The staff group heard of it.
        await eventually(  # the card goes through the outbox, after the reply or before
            lambda: any(
                ticket.ref in c.params["text"]
                for c in svc.telegram.sent_messages(chat_id=-1000000000001)
            )
        )
        assert svc.twilio.violations == [] and svc.telegram.violations == []


async def test_wrong_codes_lock_verification(database_url: str) -> None:
    async with desk(database_url) as (svc, mailbox):
        customer = WhatsAppCustomer(svc)
        await customer.say("I want a copy of my data")
        await customer.say("yes")
        await customer.say("bilal@example.com")
        await eventually(lambda: mailbox.messages)
        code = _code_in(mailbox, "bilal@example.com")
        wrong = "000000" if code != "000000" else "111111"
        for _ in range(5):
            answer = await customer.say(wrong)
        assert (
            "until" in answer.lower() or "locked" in answer.lower() or "too many" in answer.lower()
        )
        await customer.say(code)
        tickets = await _rows(database_url, Ticket)
        assert tickets[0].status == TicketStatus.AWAITING_VERIFICATION


async def test_stop_opts_out_at_once_with_one_acknowledgement(database_url: str) -> None:
    async with desk(database_url) as (svc, _):
        customer = WhatsAppCustomer(svc)
        await customer.say("STOP")
        assert len(customer.inbox()) == 1
        suppressions = await _rows(database_url, Suppression)
        assert [(s.address, s.category) for s in suppressions] == [(CUSTOMER, "marketing")]
        ledger = await _rows(database_url, ConsentRecord)
        assert ledger[0].granted is False and ledger[0].words == "STOP"
        tickets = await _rows(database_url, Ticket)
        assert tickets[0].kind == "marketing_opt_out" and tickets[0].status == TicketStatus.RESOLVED


async def test_cookie_opt_out_records_the_categories_and_whom_they_apply_to(
    database_url: str,
) -> None:
    """Issue 4 item 7: the declined categories, for the identity given (or none: skipped),
    in the consent ledger and on a resolved ticket; no code is sent for the identity."""
    async with desk(database_url) as (svc, mailbox):
        customer = WhatsAppCustomer(svc)
        assert "Which cookies" in await customer.say("turn off cookies")
        asked = await customer.say("1 2")
        assert asked == (
            "So that Optician Dynamics can apply this on its website, which email address or "
            "phone number do you use there? Write a phone number with its country code, for "
            "example +923001234567. If you would rather not say, write SKIP."
        )
        assert (await customer.say("0300 1234567")).startswith("Sorry, I did not understand")
        assert await customer.say("it is Sara@Example.COM") == (
            "You want us to turn off these cookies for Sara@example.com:\n"
            "• Analytics cookies\n• Advertising cookies\n"
            "Is that right? Please answer yes or no."
        )
        assert await customer.say("yes") == (
            "Done: we have recorded that you refuse these cookies for Sara@example.com:\n"
            "• Analytics cookies\n• Advertising cookies"
        )

        # On Telegram, the Skip button: the opt-out goes ahead without an identity.
        telegram = TelegramCustomer(svc, 8800002)
        await telegram.say("/start optician-dynamics")
        asked = await telegram.say("I refuse advertising cookies")
        assert "phone number" in asked
        (question,) = [m for m in svc.telegram.messages_in(8800002) if m["text"] == asked]
        buttons = question["reply_markup"]["inline_keyboard"]
        assert buttons == [[{"text": "Skip", "callback_data": "skip"}]]
        before = len(telegram.inbox())
        update = svc.telegram.callback_query_update(8800002, question["message_id"], "skip")
        assert (await svc.post_telegram(update)).status == 200
        await eventually(lambda: len(telegram.inbox()) > before)
        assert telegram.inbox()[-1].startswith("You want us to turn off these cookies for you:")
        assert await telegram.say("yes") == (
            "Done: we have recorded that you refuse these cookies:\n• Advertising cookies"
        )

        tickets = sorted(await _rows(database_url, Ticket), key=lambda t: t.id)
        assert [(t.kind, t.channel, t.status) for t in tickets] == [
            ("cookie_opt_out", "whatsapp", TicketStatus.RESOLVED),
            ("cookie_opt_out", "telegram", TicketStatus.RESOLVED),
        ]
        assert all(t.closed_at is not None for t in tickets)
        assert tickets[0].details == "analytics, advertising\nfor email: Sara@example.com"
        assert tickets[1].details == "advertising\nfor: no email or phone number given"
        ledger = sorted(await _rows(database_url, ConsentRecord), key=lambda r: r.id)
        assert [
            (r.channel, r.address, r.category, r.granted, r.identity, r.words, r.ticket_id)
            for r in ledger
        ] == [
            ("whatsapp", CUSTOMER, "cookies:analytics", False, "Sara@example.com",
             "turn off cookies", tickets[0].id),
            ("whatsapp", CUSTOMER, "cookies:advertising", False, "Sara@example.com",
             "turn off cookies", tickets[0].id),
            ("telegram", "8800002", "cookies:advertising", False, None,
             "I refuse advertising cookies", tickets[1].id),
        ]  # fmt: skip
        resolved = {
            e.ticket_id: e.data
            for e in await _rows(database_url, TicketEvent)
            if e.kind == "resolved"
        }
        assert resolved[tickets[0].id]["identity"] == "Sara@example.com"
        assert resolved[tickets[1].id]["identity"] is None
        # The identity is sealed at rest like other personal data, and never mailed a code.
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                stored = (
                    await conn.execute(sa.text("SELECT identity FROM consent_record"))
                ).scalars()
                assert not any(v and "Sara" in v for v in stored)
        finally:
            await engine.dispose()
        assert mailbox.messages == []
        assert svc.twilio.violations == [] and svc.telegram.violations == []


async def test_telegram_complaint_in_arabic_needs_no_verification(database_url: str) -> None:
    async with desk(database_url) as (svc, mailbox):
        customer = TelegramCustomer(svc, 8800001, language_code="ar")
        await customer.say("/start jooptics")
        await customer.say("أريد تقديم شكوى")
        await customer.say("لم تردوا على طلبي منذ شهر")
        filed = await customer.say("نعم")
        assert re.search(r"JOO-\d{4}-\d{5}", filed), filed
        tickets = await _rows(database_url, Ticket)
        assert tickets[0].kind == "complaint" and tickets[0].status == TicketStatus.OPEN
        assert tickets[0].language == "ar"
        assert mailbox.messages == []


async def test_whatsapp_marketing_stop_in_urdu_and_status(database_url: str) -> None:
    async with desk(database_url) as (svc, mailbox):
        customer = WhatsAppCustomer(svc, "whatsapp:+923009998877")
        menu = await customer.say("السلام علیکم")
        assert "پرائیویسی ڈیسک" in menu
        confirm = await customer.say("میرا ڈیٹا حذف کریں")
        assert "؟" in confirm  # asked, in Urdu, whether that is right
        asked = await customer.say("جی ہاں")
        assert "ای میل" in asked
        done = await customer.say("بند کریں")
        suppressions = await _rows(database_url, Suppression)
        assert [s.category for s in suppressions] == ["marketing"]
        assert done != asked
        status = await customer.say("اسٹیٹس")
        tickets = await _rows(database_url, Ticket)
        erasure = next(t for t in tickets if t.kind == "erasure")
        assert erasure.ref in status
        # Verified: the reference and the due date, in Urdu, the date in Karachi time.
        await customer.say("zara@example.com")
        await eventually(lambda: mailbox.messages)
        verified = await customer.say(_code_in(mailbox, "zara@example.com"))
        (erasure,) = [t for t in await _rows(database_url, Ticket) if t.kind == "erasure"]
        assert erasure.status == TicketStatus.OPEN and erasure.due_at is not None
        due = _due_date(erasure.due_at, "ur")
        assert re.search(r"[\u0600-\u06ff]", due), due  # the month's Urdu name
        assert verified == (
            "شکریہ، آپ کی شناخت کی تصدیق ہو گئی ہے۔ ہم آپ کی درخواست "
            f"{FSI}{erasure.ref}{PDI} پر کام کر رہے ہیں اور {FSI}{due}{PDI} تک جواب دیں گے۔"
        )


async def test_cancel_ref_withdraws_the_customers_own_request(database_url: str) -> None:
    async with desk(database_url) as (svc, mailbox):
        customer = WhatsAppCustomer(svc)
        ref = await _file_verified_erasure(customer, mailbox, "amina@example.com")
        await eventually(lambda: any(ref in text for text in _staff_texts(svc)))  # the card

        # Someone else's reference, and one that does not exist: refused, nothing changes.
        stranger = WhatsAppCustomer(svc, "whatsapp:+923004445566")
        assert await stranger.say(f"cancel {ref}") == (
            f"We could not find a request {ref} of yours. Write STATUS to see your requests."
        )
        unknown = "OD-2026-99999" if ref != "OD-2026-99999" else "OD-2026-99998"
        assert await customer.say(f"cancel {unknown}") == (
            f"We could not find a request {unknown} of yours. Write STATUS to see your requests."
        )
        (ticket,) = [t for t in await _rows(database_url, Ticket) if t.ref == ref]
        assert ticket.status == TicketStatus.OPEN and ticket.closed_at is None
        assert "cancelled" not in [e.kind for e in await _rows(database_url, TicketEvent)]
        assert not any("withdrew" in text for text in _staff_texts(svc))

        # The customer's own: withdrawn, recorded, acknowledged, and staff are told.
        assert await customer.say(f"cancel {ref}") == f"Your request {ref} has been withdrawn."
        (ticket,) = [t for t in await _rows(database_url, Ticket) if t.ref == ref]
        assert ticket.status == TicketStatus.CANCELLED and ticket.closed_at is not None
        (event,) = [e for e in await _rows(database_url, TicketEvent) if e.kind == "cancelled"]
        assert event.ticket_id == ticket.id and event.actor == "customer"
        assert event.data == {"status": "cancelled"}
        told = await eventually(
            lambda: [
                c
                for c in svc.telegram.sent_messages(chat_id=OD_STAFF_CHAT)
                if "withdrew" in c.params.get("text", "")
            ]
        )
        assert len(told) == 1
        assert told[0].params["text"] == (
            f"🚫 <b>{ref}</b> · the customer withdrew this request; it is now cancelled."
        )
        assert told[0].params.get("parse_mode") == "HTML"
        # Under the ticket's card (a plain group: no forum topic), which now says so too.
        card = next(m for m in svc.telegram.messages_in(OD_STAFF_CHAT) if ref in m["text"])
        assert told[0].params["reply_parameters"]["message_id"] == card["message_id"]
        await eventually(
            lambda: (
                "Withdrawn"
                in next(m for m in svc.telegram.messages_in(OD_STAFF_CHAT) if ref in m["text"])[
                    "text"
                ]
            )
        )

        # Twice: already closed, and nothing more happens.
        assert await customer.say(f"cancel {ref}") == (
            f"Your request {ref} is already closed, so it cannot be withdrawn."
        )
        assert (
            len([e for e in await _rows(database_url, TicketEvent) if e.kind == "cancelled"]) == 1
        )
        assert sum("withdrew" in text for text in _staff_texts(svc)) == 1
        assert svc.twilio.violations == [] and svc.telegram.violations == []


async def test_start_after_stop_opts_back_in(database_url: str) -> None:
    async with desk(database_url) as (svc, _):
        customer = WhatsAppCustomer(svc)
        token = await _api_token(database_url)
        began = datetime.now(UTC)
        assert await customer.say("STOP") == (
            "Done: Optician Dynamics will not send you marketing messages any more. Write START "
            "if you change your mind."
        )
        assert await _suppressions(svc, token) == [("whatsapp", CUSTOMER, "marketing")]
        assert await customer.say("START") == (
            "You will receive messages from Optician Dynamics again. Write STOP at any time to "
            "opt out."
        )
        ended = datetime.now(UTC)
        assert len(customer.inbox()) == 2  # one acknowledgement each

        ledger = sorted(await _rows(database_url, ConsentRecord), key=lambda r: r.id)
        (conversation,) = await _rows(database_url, Conversation)
        assert conversation.requester_id is not None
        assert [
            (r.tenant, r.requester_id, r.channel, r.address, r.category, r.granted, r.words)
            for r in ledger
        ] == [
            (
                "optician-dynamics",
                conversation.requester_id,
                "whatsapp",
                CUSTOMER,
                "marketing",
                False,
                "STOP",
            ),
            (
                "optician-dynamics",
                conversation.requester_id,
                "whatsapp",
                CUSTOMER,
                "marketing",
                True,
                "START",
            ),
        ]
        assert began <= ledger[0].at <= ledger[1].at <= ended
        assert await _rows(database_url, Suppression) == []
        assert await _suppressions(svc, token) == []


async def test_a_telegram_customer_without_a_start_parameter_picks_the_business(
    database_url: str,
) -> None:
    async with desk(database_url) as (svc, _mailbox):
        names = [t.name for t in load_tenants(TENANTS_DIR)]
        assert len(names) > 1
        # By number: the list, then the second business's own menu (the "2" picks the
        # business, not the second request type of its menu).
        first = TelegramCustomer(svc, 5551201)
        offer = await first.say("hello")
        assert offer.startswith("Which business would you like to contact?")
        assert all(f"{n}. {name}" in offer for n, name in enumerate(names, start=1))
        (sent,) = svc.telegram.sent_messages(chat_id=5551201)
        keyboard = sent.params["reply_markup"]["inline_keyboard"]
        assert [row[0]["text"] for row in keyboard] == names
        menu = await first.say("2")
        assert names[1] in menu and "1." in menu
        assert "Is that right?" not in menu and names[0] not in menu
        # By button, from another chat.
        second = TelegramCustomer(svc, 5551202)
        await second.say("hello")
        (offer_message,) = svc.telegram.sent_messages(chat_id=5551202)
        press = svc.telegram.callback_query_update(
            5551202, offer_message.result["message_id"], keyboard[2][0]["callback_data"]
        )
        assert (await svc.post_telegram(press)).status == 200
        await eventually(lambda: len(second.inbox()) > 1)
        assert names[2] in second.inbox()[-1]
        # Later messages stay with the chosen business, without asking again.
        again = await first.say("status")
        assert "Which business" not in again
