"""Intake transcripts through the real webhooks, the real twilio and python-telegram-bot
clients against the loopback fakes, and a real SMTP server for the codes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlmodel import select

from storage.db import create_engine, session_factory
from storage.enums import TicketStatus
from storage.models import ConsentRecord, Conversation, Suppression, Ticket, TicketEvent
from tests.fakes.twilio_api import inbound_whatsapp_form
from tests.service import Service, eventually, running_service
from tests.test_mail import Collector, smtp_server

OD_NUMBER = "whatsapp:+14155238881"
CUSTOMER = "whatsapp:+923001112233"


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
    async with desk(database_url) as (svc, _):
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
