"""The staff desk through the webhook, the real python-telegram-bot and twilio clients and the
loopback fakes: a ticket's whole life on WhatsApp and on Telegram, strangers refused, and a
burst of new tickets inside Telegram's limits."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bot.customers import import_customers, read_rows
from bot.desk import Desk
from bot.tenants import load_tenants
from storage.crypto import blind_index
from storage.db import create_engine, session_factory, transaction
from storage.desk_models import DeskCard, DeskFile, DeskPrompt, DownloadRecord
from storage.enums import OutboxStatus, TicketStatus
from storage.models import Conversation, OutboundMessage, Requester, Ticket, TicketEvent
from storage.tickets import create_ticket
from tests.conftest import TENANTS_DIR
from tests.fakes.twilio_api import inbound_whatsapp_form
from tests.service import PUBLIC, Service, eventually, running_service
from tests.test_mail import Collector, smtp_server

STAFF_CHAT = -1000000000001  # optician-dynamics' staff group
JOO_CHAT = -1000000000002
SANA, OMAR = 701, 702  # optician-dynamics staff (Omar is also its admin)
HADI = 801  # jooptics staff
EVE = 999  # on nobody's staff
OD_NUMBER = "whatsapp:+14155238881"
CUSTOMER = "whatsapp:+923001234001"
TG_CUSTOMER = 5550001
EXPORT = b"name,email,orders\nAmina Khan,amina@example.com,3\n"
# A photo as Telegram keeps it: a thumbnail, a medium and the full size, smallest first.
PHOTO_SIZES = (b"\xff\xd8 thumb", b"\xff\xd8 medium size", b"\xff\xd8 full size of the scan")


def desk_tenants(tmp_path: Path) -> Path:
    """The shipped tenants, with staff ids set (and an extension allowed at OD)."""
    folder = tmp_path / "tenants"
    folder.mkdir()
    for path in TENANTS_DIR.glob("*.toml"):
        text = path.read_text()
        if path.stem == "optician-dynamics":
            text = text.replace("staff_user_ids = []", f"staff_user_ids = [{SANA}, {OMAR}]")
            text = text.replace("admin_user_ids = []", f"admin_user_ids = [{OMAR}]")
            text = text.replace("[extensions]\n", '[extensions]\nmax = "5 business days"\n', 1)
        elif path.stem == "jooptics":
            text = text.replace("staff_user_ids = []", f"staff_user_ids = [{HADI}]")
        (folder / path.name).write_text(text)
    return folder


@asynccontextmanager
async def desk_service(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Service, Collector]]:
    with smtp_server() as (mailbox, port):
        async with running_service(
            database_url, tenants_dir=desk_tenants(tmp_path), smtp_url=f"smtp://127.0.0.1:{port}"
        ) as svc:
            yield svc, mailbox


async def rows(database_url: str, model: type, *where: Any) -> list[Any]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            query = select(model).where(*where) if where else select(model)
            return list(await session.exec(query))
    finally:
        await engine.dispose()


async def ticket_row(database_url: str, ref: str) -> Ticket:
    found = await rows(database_url, Ticket, Ticket.ref == ref)
    assert len(found) == 1
    return found[0]


async def event_kinds(database_url: str, ticket_id: int) -> list[tuple[str, str]]:
    events = await rows(database_url, TicketEvent, TicketEvent.ticket_id == ticket_id)
    return [(e.kind, e.actor) for e in sorted(events, key=lambda e: e.id)]


async def import_customers_csv(database_url: str, text: str) -> None:
    """The business's customer list, as `rightsdesk customers import` reads it."""
    engine = create_engine(database_url)
    try:
        async with transaction(session_factory(engine)) as session:
            report = await import_customers(
                session,
                tenant="optician-dynamics",
                rows=read_rows(text.splitlines()),
                now=datetime.now(UTC),
            )
            assert not report.skipped
    finally:
        await engine.dispose()


def code_in(mailbox: Collector, to: str) -> str:
    mails = [m for m in mailbox.messages if to in m.rcpt_tos]
    assert mails, f"no mail to {to}"
    body = mails[-1].message.get_body(preferencelist=("plain",))
    assert body is not None
    match = re.search(r"\b(\d{6})\b", body.get_content())
    assert match
    return match.group(1)


class WhatsApp:
    """A customer typing into WhatsApp."""

    def __init__(self, svc: Service, number: str = CUSTOMER) -> None:
        self.svc, self.number = svc, number

    def inbox(self) -> list[str]:
        return [c.params["Body"] for c in self.svc.twilio.sent_messages(to=self.number)]

    async def say(self, text: str, *, answers: int = 1) -> str:
        before = len(self.inbox())
        form = inbound_whatsapp_form(from_=self.number, to=OD_NUMBER, body=text)
        assert (await self.svc.post_whatsapp(form)).status == 200
        await eventually(lambda: len(self.inbox()) >= before + answers)
        return self.inbox()[-1]


class TelegramUser:
    """A customer in a private chat with the bot."""

    def __init__(self, svc: Service, chat_id: int) -> None:
        self.svc, self.chat_id = svc, chat_id

    def inbox(self) -> list[Any]:
        return self.svc.telegram.sent_messages(chat_id=self.chat_id)

    def texts(self) -> list[str]:
        return [c.params.get("text") or c.params.get("caption") or "" for c in self.inbox()]

    async def say(self, text: str) -> str:
        before = len(self.inbox())
        update = self.svc.telegram.message_update(self.chat_id, text)
        assert (await self.svc.post_telegram(update)).status == 200
        await eventually(lambda: len(self.inbox()) > before)
        return self.texts()[-1]


class Staff:
    """A Telegram user writing in the staff group (or a private chat) and pressing buttons."""

    def __init__(self, svc: Service, user_id: int, name: str, chat: int = STAFF_CHAT) -> None:
        self.svc, self.user_id, self.name, self.chat = svc, user_id, name, chat

    async def write(self, text: str | None, **fields: Any) -> dict[str, Any]:
        update = self.svc.telegram.message_update(
            self.chat, text, user_id=self.user_id, first_name=self.name, **fields
        )
        assert (await self.svc.post_telegram(update)).status == 200
        return update["message"]

    async def press(self, message_id: int, data: str, chat: int | None = None) -> str:
        update = self.svc.telegram.callback_query_update(
            chat or self.chat, message_id, data, user_id=self.user_id, first_name=self.name
        )
        assert (await self.svc.post_telegram(update)).status == 200
        return str(update["callback_query"]["id"])

    async def answered(self, query_id: str) -> dict[str, Any]:
        """The bot's answer to a button press (each is answered exactly once)."""
        calls = await eventually(
            lambda: [
                c for c in self.svc.telegram.calls_to("answerCallbackQuery")
                if c.params["callback_query_id"] == query_id
            ]
        )  # fmt: skip
        assert len(calls) == 1
        return calls[0].params


def chat_messages(svc: Service, chat: int = STAFF_CHAT) -> list[dict[str, Any]]:
    return svc.telegram.messages_in(chat)


def from_bot(svc: Service, chat: int = STAFF_CHAT, after: int = 0) -> list[dict[str, Any]]:
    return [
        m for m in chat_messages(svc, chat)
        if m["from"]["is_bot"] and m["message_id"] > after
    ]  # fmt: skip


async def card_of(svc: Service, ref: str, chat: int = STAFF_CHAT) -> dict[str, Any]:
    """The ticket's card: the bot's message naming it with its buttons."""
    return await eventually(
        lambda: next(
            (
                m for m in chat_messages(svc, chat)
                if m["from"]["is_bot"] and m.get("text", "").split(" · ")[0].endswith(ref)
                and "Status:" in m.get("text", "")
            ),
            None,
        )
    )  # fmt: skip


def button(message: dict[str, Any], label: str) -> str:
    for row in message.get("reply_markup", {}).get("inline_keyboard", []):
        for key in row:
            if label in key["text"]:
                return str(key["callback_data"])
    raise AssertionError(f"no button {label!r} on {message.get('text')!r}")


async def new_bot_message(svc: Service, after: int, contains: str, chat: int = STAFF_CHAT) -> Any:
    return await eventually(
        lambda: next((m for m in from_bot(svc, chat, after) if contains in m.get("text", "")), None)
    )


def last_id(svc: Service, chat: int = STAFF_CHAT) -> int:
    return max((m["message_id"] for m in chat_messages(svc, chat)), default=0)


async def file_whatsapp_access(svc: Service, mailbox: Collector, customer: WhatsApp) -> str:
    """Ask for a copy of one's data on WhatsApp and prove the email: the reference."""
    await customer.say("I want a copy of my data")
    await customer.say("yes")
    await customer.say("amina@example.com")
    await eventually(lambda: mailbox.messages)
    filed = await customer.say(code_in(mailbox, "amina@example.com"))
    found = re.search(r"OD-\d{4}-\d{5}", filed)
    assert found, filed
    return found.group(0)


def clean(svc: Service) -> None:
    assert svc.telegram.violations == []
    assert svc.twilio.violations == []
    assert svc.telegram.rate_violations == []


async def test_ticket_life_with_a_whatsapp_customer(database_url: str, tmp_path: Path) -> None:
    async with desk_service(database_url, tmp_path) as (svc, mailbox):
        customer = WhatsApp(svc)
        ref = await file_whatsapp_access(svc, mailbox, customer)
        sana = Staff(svc, SANA, "Sana")

        # The card: reference, type, channel, language, due date and time left, identity.
        card = await card_of(svc, ref)
        text = card["text"]
        assert "Access (copy of data)" in text and "WhatsApp" in text and "English" in text
        assert re.search(r"Due: \d{4}-\d{2}-\d{2} 23:59 PKT \(in \d+ days?", text), text
        assert "verified by a code" in text
        assert "Customer: not on the customer list · first request" in text

        # The card's message id is recorded once the outbox has heard back from Telegram,
        # a moment after the fake shows the card.
        async def card_recorded() -> Ticket | None:
            row = await ticket_row(database_url, ref)
            return row if row.staff_message_id == card["message_id"] else None

        ticket = await eventually(card_recorded)
        assert ticket.status == TicketStatus.OPEN

        # Claim with the button: the card is edited in place.
        answer = await sana.answered(await sana.press(card["message_id"], button(card, "Claim")))
        assert ref in answer["text"]
        await eventually(lambda: "claimed by Sana" in card_of_now(svc, card)["text"])
        ticket = await ticket_row(database_url, ref)
        assert ticket.status == TicketStatus.IN_PROGRESS and ticket.assignee_user_id == SANA

        # Reply asks with a force-reply prompt; the answer to it goes to the customer.
        mark = last_id(svc)
        await sana.press(card["message_id"], button(card, "Reply"))
        prompt = await new_bot_message(svc, mark, "reply to this message")
        await sana.write("Which branch did you visit?", reply_to_message_id=prompt["message_id"])
        await eventually(lambda: any("Which branch" in body for body in customer.inbox()))
        relayed = next(body for body in customer.inbox() if "Which branch" in body)
        assert relayed.startswith(f"Message from Optician Dynamics about your request {ref}")
        await eventually(lambda: "awaiting requester" in card_of_now(svc, card)["text"])

        # The customer's answer comes back under the card and the ticket is worked on again.
        mark = last_id(svc)
        ack = await customer.say("The Lahore branch, last March")
        assert ack.startswith("Thank you. We have passed your answer")
        back = await new_bot_message(svc, mark, "The Lahore branch, last March")
        assert back["reply_to_message"]["message_id"] == card["message_id"]
        ticket = await ticket_row(database_url, ref)
        assert ticket.status == TicketStatus.IN_PROGRESS

        # A file replied to the card: stored encrypted, sent as a signed download link.
        document = svc.telegram.add_file(EXPORT, file_name="export.csv", mime_type="text/csv")
        before = len(customer.inbox())
        await sana.write(
            "Here is the export you asked for",
            reply_to_message_id=card["message_id"],
            document=document,
            caption="Here is the export you asked for",
        )
        await eventually(lambda: len(customer.inbox()) >= before + 2)
        link_text = customer.inbox()[-1]
        assert "Open the link below" in link_text and "do not share" in link_text
        url = re.search(rf"{re.escape(PUBLIC)}/d/(\S+)", link_text)
        assert url, link_text
        stored = await rows(database_url, DeskFile)
        assert len(stored) == 1 and EXPORT not in bytes(stored[0].sealed)
        page = await svc.http.get(f"{svc.url}/d/{url.group(1)}")
        assert page.status == 200 and "Download" in await page.text()
        assert await rows(database_url, DownloadRecord) == []  # a look is not a download
        got = await svc.http.post(f"{svc.url}/d/{url.group(1)}")
        assert got.status == 200 and await got.read() == EXPORT
        assert "export.csv" in got.headers["Content-Disposition"]
        assert len(await rows(database_url, DownloadRecord)) == 1
        forged = url.group(1)[:-3] + ("AAA" if not url.group(1).endswith("AAA") else "BBB")
        assert (await svc.http.get(f"{svc.url}/d/{forged}")).status == 404

        # A photo replied to the card: its largest size, as a download link of its own.
        before = len(customer.inbox())
        photo = svc.telegram.add_photo(*PHOTO_SIZES)
        await sana.write(None, reply_to_message_id=card["message_id"], photo=photo)
        await eventually(lambda: len(customer.inbox()) > before)
        photo_link = re.search(rf"{re.escape(PUBLIC)}/d/(\S+)", customer.inbox()[-1])
        assert photo_link and photo_link.group(1) != url.group(1), customer.inbox()[-1]
        got = await svc.http.post(f"{svc.url}/d/{photo_link.group(1)}")
        assert got.status == 200 and await got.read() == PHOTO_SIZES[-1]
        assert got.headers["Content-Type"] == "image/jpeg"
        assert f"{ref}.jpg" in got.headers["Content-Disposition"]

        # Resolve with a note: the customer reads it; the card shows the end, without buttons.
        before = len(customer.inbox())
        await sana.write(f"/resolve {ref} Your data has been sent to you.")
        await eventually(lambda: len(customer.inbox()) > before)
        assert customer.inbox()[-1] == (
            f"Your request {ref} has been completed. Note from Optician Dynamics:\n\n"
            "Your data has been sent to you."
        )
        await eventually(lambda: "Resolved" in card_of_now(svc, card)["text"])
        final = card_of_now(svc, card)
        assert "reply_markup" not in final and "by Sana" in final["text"]
        ticket = await ticket_row(database_url, ref)
        assert ticket.status == TicketStatus.RESOLVED and ticket.closed_at is not None
        kinds = await event_kinds(database_url, ticket.id or 0)
        assert ("claimed", f"staff:{SANA}") in kinds
        assert kinds.count(("staff_reply", f"staff:{SANA}")) == 3
        assert ("customer_message", "customer") in kinds
        assert ("file_downloaded", "customer") in kinds
        assert kinds[-1] == ("resolved", f"staff:{SANA}")
        clean(svc)


def card_of_now(svc: Service, card: dict[str, Any], chat: int = STAFF_CHAT) -> dict[str, Any]:
    return svc.telegram.messages[(chat, card["message_id"])]


async def test_ticket_life_with_a_telegram_customer_in_a_forum(
    database_url: str, tmp_path: Path
) -> None:
    async with desk_service(database_url, tmp_path) as (svc, mailbox):
        svc.telegram.add_chat(STAFF_CHAT, chat_type="supergroup", is_forum=True)
        await import_customers_csv(
            database_url, "name,email,phone,customer id\nBilal Ahmed,Bilal@Example.com,,C-1001\n"
        )
        customer = TelegramUser(svc, TG_CUSTOMER)
        await customer.say("/start optician-dynamics")
        await customer.say("I want a copy of my data")
        await customer.say("yes")
        await customer.say("bilal@example.com")
        await eventually(lambda: mailbox.messages)
        filed = await customer.say(code_in(mailbox, "bilal@example.com"))
        ref = re.search(r"OD-\d{4}-\d{5}", filed)
        assert ref, filed
        ref_text = ref.group(0)

        # A topic per ticket, with the card in it.
        topic = await eventually(
            lambda: next((k for k, name in svc.telegram.topics.items() if ref_text in name), None)
        )
        thread = topic[1]
        card = await card_of(svc, ref_text)
        assert card["message_thread_id"] == thread
        assert "Identity: ✅ verified by a code" in card["text"]
        assert "known customer (customer id C-1001, by the verified email)" in card["text"]
        ticket = await ticket_row(database_url, ref_text)
        assert ticket.staff_thread_id == thread
        omar = Staff(svc, OMAR, "Omar")

        # Commands in the topic; a plain message in the topic goes to the customer.
        mark = last_id(svc)
        await omar.write(f"/claim {ref_text}", message_thread_id=thread)
        await new_bot_message(svc, mark, "is now yours")
        await omar.write(
            "Is bilal@example.com the address on your account?", message_thread_id=thread
        )
        asked = await eventually(
            lambda: next((t for t in customer.texts() if "address on your account" in t), None)
        )
        assert asked.startswith(f"Message from Optician Dynamics about your request {ref_text}")
        assert (await ticket_row(database_url, ref_text)).status == TicketStatus.AWAITING_REQUESTER

        mark = last_id(svc)
        assert (await customer.say("Yes it is")).startswith("Thank you. We have passed your answer")
        back = await new_bot_message(svc, mark, "Yes it is")
        assert back["message_thread_id"] == thread
        assert (await ticket_row(database_url, ref_text)).status == TicketStatus.IN_PROGRESS

        # An internal note stays in the desk.
        before = len(customer.inbox())
        await omar.write(f"/note {ref_text} checked the CRM, two orders")
        await new_bot_message(svc, mark, "Note kept")
        assert len(customer.inbox()) == before

        # A document in the topic reaches the customer as the same document.
        document = svc.telegram.add_file(EXPORT, file_name="export.csv", mime_type="text/csv")
        await omar.write(None, message_thread_id=thread, document=document)
        sent = await eventually(lambda: [c for c in customer.inbox() if c.method == "sendDocument"])
        delivered = svc.telegram.files[sent[0].params["document"]]
        assert delivered.data == EXPORT
        assert ref_text in sent[0].params["caption"]

        # A photo in the topic reaches the customer as a photo: its largest size.
        photo = svc.telegram.add_photo(*PHOTO_SIZES)
        await omar.write(None, message_thread_id=thread, photo=photo)
        sent = await eventually(lambda: [c for c in customer.inbox() if c.method == "sendPhoto"])
        assert sent[0].params["photo"] == photo[-1]["file_id"]
        assert svc.telegram.files[sent[0].params["photo"]].data == PHOTO_SIZES[-1]
        assert ref_text in sent[0].params["caption"]

        # Extend through the button and its prompt: reason required, customer told.
        mark = last_id(svc)
        await omar.press(card["message_id"], button(card, "Extend"))
        prompt = await new_bot_message(svc, mark, "reason for extending")
        assert prompt["message_thread_id"] == thread
        due_before = (await ticket_row(database_url, ref_text)).due_at
        await omar.write(
            "The archive takes time to search",
            reply_to_message_id=prompt["message_id"],
            message_thread_id=thread,
        )
        told = await eventually(
            lambda: next((t for t in customer.texts() if "need more time" in t), None)
        )
        assert "The archive takes time to search" in told
        ticket = await ticket_row(database_url, ref_text)
        assert ticket.due_at is not None and due_before is not None and ticket.due_at > due_before

        # Resolve through its prompt; the card in the topic shows the end.
        mark = last_id(svc)
        await omar.press(card["message_id"], button(card, "Resolve"))
        prompt = await new_bot_message(svc, mark, "closing note")
        await omar.write("-", reply_to_message_id=prompt["message_id"], message_thread_id=thread)
        done = await eventually(
            lambda: next((t for t in customer.texts() if "completed" in t), None)
        )
        assert done == f"Your request {ref_text} has been completed."
        await eventually(lambda: "Resolved" in card_of_now(svc, card)["text"])

        # The topic shows the end too: renamed with the outcome and closed, each call once.
        await eventually(lambda: topic in svc.telegram.closed_topics)
        assert svc.telegram.topics[topic] == f"✓ {ref_text} · Access (copy of data)"
        assert len(svc.telegram.calls_to("editForumTopic")) == 1
        assert len(svc.telegram.calls_to("closeForumTopic")) == 1
        kinds = await event_kinds(database_url, ticket.id or 0)
        assert [k for k, actor in kinds if actor == f"staff:{OMAR}"] == [
            "claimed", "staff_reply", "note", "staff_reply", "staff_reply", "extended", "resolved"
        ]  # fmt: skip
        clean(svc)


async def test_rejection_names_the_regulator_in_the_customers_language(
    database_url: str, tmp_path: Path
) -> None:
    async with desk_service(database_url, tmp_path) as (svc, _mailbox):
        svc.telegram.add_chat(JOO_CHAT, chat_type="supergroup", is_forum=True)
        customer = TelegramUser(svc, 5550002)
        await customer.say("/start jooptics")
        await customer.say("أريد تقديم شكوى")
        await customer.say("لم تردوا على طلبي منذ شهر")
        filed = await customer.say("نعم")
        ref = re.search(r"JOO-\d{4}-\d{5}", filed)
        assert ref, filed
        await card_of(svc, ref.group(0), JOO_CHAT)
        hadi = Staff(svc, HADI, "Hadi", chat=JOO_CHAT)
        mark = last_id(svc, JOO_CHAT)
        await hadi.write(f"/reject {ref.group(0)}")  # no reason: refused, nothing changes
        await new_bot_message(svc, mark, "needs a reason", JOO_CHAT)
        assert (await ticket_row(database_url, ref.group(0))).status == TicketStatus.OPEN
        await hadi.write(f"/reject {ref.group(0)} We hold no data about you.")
        text = await eventually(
            lambda: next((t for t in customer.texts() if "شكوى إلى" in t), None)
        )
        assert "We hold no data about you." in text
        assert "Personal Data Protection Unit" in text
        ticket = await ticket_row(database_url, ref.group(0))
        assert ticket.status == TicketStatus.REJECTED

        # Its forum topic is closed and named with the outcome.
        topic = (JOO_CHAT, ticket.staff_thread_id)
        await eventually(lambda: topic in svc.telegram.closed_topics)
        assert svc.telegram.topics[topic] == f"✗ {ref.group(0)} · Complaint"
        clean(svc)


async def test_strangers_are_refused_and_change_nothing(database_url: str, tmp_path: Path) -> None:
    async with desk_service(database_url, tmp_path) as (svc, mailbox):
        customer = WhatsApp(svc)
        ref = await file_whatsapp_access(svc, mailbox, customer)
        card = await card_of(svc, ref)
        ticket = await ticket_row(database_url, ref)
        events = await event_kinds(database_url, ticket.id or 0)
        outbox_before = len(await rows(database_url, OutboundMessage))
        customer_before = len(customer.inbox())

        # A staff member opens a prompt; the stranger tries to answer it.
        sana = Staff(svc, SANA, "Sana")
        mark = last_id(svc)
        await sana.press(card["message_id"], button(card, "Reply"))
        prompt = await new_bot_message(svc, mark, "reply to this message")
        await eventually(lambda: svc.telegram.calls_to("answerCallbackQuery"))
        outbox_before = len(await rows(database_url, OutboundMessage))

        eve = Staff(svc, EVE, "Eve")
        commands = [
            "/help", "/tickets", "/mine", "/overdue", f"/ticket {ref}", f"/claim {ref}",
            f"/reply {ref} hello", f"/note {ref} hello", f"/resolve {ref} done",
            f"/reject {ref} no", f"/extend {ref} busy",
        ]  # fmt: skip
        for command in commands:
            mark = last_id(svc)
            sent = await eve.write(command)
            refusal = await new_bot_message(svc, mark, "Only the staff of Optician Dynamics")
            assert refusal["reply_to_message"]["message_id"] == sent["message_id"]
        for label in ("Claim", "Reply", "Note", "Resolve", "Reject", "Extend"):
            answer = await eve.answered(await eve.press(card["message_id"], button(card, label)))
            assert "Only the staff of Optician Dynamics" in answer["text"] and answer["show_alert"]
        # The buttons of digests and lists too (a card's own data, another ticket's).
        for data in (f"d:open:{ticket.id}", "d:page:tickets:2", f"d:claim:{(ticket.id or 0) + 1}"):
            answer = await eve.answered(await eve.press(card["message_id"], data))
            assert "Only the staff of Optician Dynamics" in answer["text"] and answer["show_alert"]
        for target in (card["message_id"], prompt["message_id"]):
            mark = last_id(svc)
            await eve.write("let me answer that", reply_to_message_id=target)
            await new_bot_message(svc, mark, "nothing was changed")

        # In a private chat with the bot, too; and a stranger's /help there is the customer menu.
        private = Staff(svc, EVE, "Eve", chat=EVE)
        for command in commands[1:]:
            mark = last_id(svc, EVE)
            await private.write(command)
            await new_bot_message(svc, mark, "staff of a business on this desk", EVE)
        mark = last_id(svc, EVE)
        await private.write("/help")
        menu = await new_bot_message(svc, mark, "", EVE)
        assert "Staff desk" not in menu["text"] and "/claim" not in menu["text"]

        # Staff of another business neither act on nor see this ticket.
        hadi = Staff(svc, HADI, "Hadi", chat=HADI)
        mark = last_id(svc, HADI)
        await hadi.write(f"/ticket {ref}")
        await new_bot_message(svc, mark, f"No ticket {ref}", HADI)
        mark = last_id(svc, HADI)
        await hadi.write("/tickets")
        listing = await new_bot_message(svc, mark, "Open tickets", HADI)
        assert "OD-" not in listing["text"]
        answer = await Staff(svc, HADI, "Hadi").answered(
            await Staff(svc, HADI, "Hadi").press(card["message_id"], button(card, "Claim"))
        )
        assert "Only the staff" in answer["text"]

        # Nothing changed: the ticket, its history, the customer's chat, the queue to them.
        after = await ticket_row(database_url, ref)
        assert (after.status, after.assignee_user_id, after.due_at) == (
            ticket.status, ticket.assignee_user_id, ticket.due_at
        )  # fmt: skip
        assert await event_kinds(database_url, ticket.id or 0) == events
        assert len(customer.inbox()) == customer_before
        to_customer = await rows(
            database_url, OutboundMessage, OutboundMessage.recipient_index == blind_index(CUSTOMER)
        )
        assert len(to_customer) == customer_before
        prompts = await rows(database_url, DeskPrompt)
        assert [p.user_id for p in prompts] == [SANA] and prompts[0].closed_at is None
        assert len(await rows(database_url, OutboundMessage)) > outbox_before  # refusals only
        clean(svc)


async def test_a_burst_of_200_new_tickets_stays_within_telegrams_limits(
    database_url: str, tmp_path: Path
) -> None:
    folder = desk_tenants(tmp_path)
    async with running_service(database_url, tenants_dir=folder) as svc:
        desk = Desk(load_tenants(folder), b"test-secret-key")
        engine = create_engine(database_url)
        sessions = session_factory(engine)
        now = datetime.now(UTC)
        try:
            for _batch in range(10):
                async with transaction(sessions) as session:
                    for _ in range(20):
                        requester = Requester(tenant="optician-dynamics")
                        session.add(requester)
                        await session.flush()
                        ticket = await create_ticket(
                            session,
                            tenant="optician-dynamics",
                            ref_prefix="OD",
                            kind="erasure",
                            channel="whatsapp",
                            received_at=now,
                            requester_id=requester.id,
                            due_at=now + timedelta(days=9),
                            clock_started_at=now,
                        )
                        await desk.ticket_changed(session, ticket, now)

            async def all_shown() -> bool:
                async with sessions() as session:
                    missing = await session.exec(
                        select(Ticket.id).where(col(Ticket.staff_message_id).is_(None))
                    )
                    return missing.first() is None

            shown = False
            for _ in range(600):
                if shown := await all_shown():
                    break
                await asyncio.sleep(0.1)
            assert shown, "not every ticket reached the staff chat"
        finally:
            await engine.dispose()

        tickets = await rows(database_url, Ticket)
        assert len(tickets) == 200
        texts = "\n".join(m.get("text", "") for m in chat_messages(svc))
        assert all(t.ref in texts for t in tickets), "a ticket is missing from the staff chat"
        posts = svc.telegram.sent_messages(chat_id=STAFF_CHAT)
        assert len(posts) <= 20, len(posts)
        assert svc.telegram.rate_violations == []
        queue = await rows(database_url, OutboundMessage)
        failed = [m.payload.get("method") for m in queue if m.status != OutboxStatus.SENT]
        assert set(failed) <= {"create_forum_topic"}  # how the desk learns it is no forum
        digests = await rows(database_url, DeskCard, DeskCard.kind == "digest")
        assert digests and all(d.message_id is not None for d in digests)

        # A digest line opens its own card; claiming from the digest edits the digest.
        digest = next(m for m in chat_messages(svc) if "new requests" in m.get("text", ""))
        first = digest["reply_markup"]["inline_keyboard"][0]
        ref = first[0]["text"].split()[-1]
        sana = Staff(svc, SANA, "Sana")
        await sana.press(digest["message_id"], first[0]["callback_data"])
        card = await card_of(svc, ref)
        assert button(card, "Claim").startswith("d:claim:")
        await sana.press(digest["message_id"], first[1]["callback_data"])
        await eventually(
            lambda: "Sana" in svc.telegram.messages[(STAFF_CHAT, digest["message_id"])]["text"]
        )
        await eventually(lambda: "claimed by Sana" in card_of_now(svc, card)["text"])
        clean(svc)


async def seed_tickets(
    database_url: str,
    folder: Path,
    dues: list[timedelta],
    *,
    tenant: str = "optician-dynamics",
    prefix: str = "OD",
    status: TicketStatus = TicketStatus.OPEN,
) -> list[str]:
    """Tickets as the intake files them (a customer on WhatsApp who wrote just now), shown to
    staff through the desk; their references."""
    desk = Desk(load_tenants(folder), b"test-secret-key")
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    refs = []
    try:
        async with transaction(session_factory(engine)) as session:
            for number, due in enumerate(dues):
                requester = Requester(tenant=tenant)
                session.add(requester)
                await session.flush()
                session.add(
                    Conversation(
                        channel="whatsapp",
                        address=f"whatsapp:+9230055{number:05d}",
                        tenant=tenant,
                        requester_id=requester.id,
                        last_inbound_at=now,
                    )
                )
                ticket = await create_ticket(
                    session,
                    tenant=tenant,
                    ref_prefix=prefix,
                    kind="erasure",
                    channel="whatsapp",
                    received_at=now - timedelta(days=20),
                    status=status,
                    requester_id=requester.id,
                    due_at=now + due,
                    clock_started_at=now - timedelta(days=20),
                )
                await desk.ticket_changed(session, ticket, now)
                refs.append(ticket.ref)
    finally:
        await engine.dispose()
    return refs


async def test_lists_are_sorted_by_due_date_paged_and_kept_to_ones_own_business(
    database_url: str, tmp_path: Path
) -> None:
    async with desk_service(database_url, tmp_path) as (svc, _mailbox):
        folder = Path(svc.settings.tenants_dir)
        dues = [timedelta(days=d) for d in (5, -2, 9, 1, -1, 3, 7, 2, 8, 4)]
        refs = await seed_tickets(database_url, folder, dues)
        await seed_tickets(
            database_url, folder, [timedelta(days=1)], tenant="jooptics", prefix="JOO"
        )
        by_due = [ref for _due, ref in sorted(zip(dues, refs, strict=True))]
        sana = Staff(svc, SANA, "Sana", chat=SANA)
        await sana.write(f"/claim {refs[0]}")
        await sana.write(f"/claim {refs[2]}")
        await eventually(lambda: len(from_bot(svc, SANA)) >= 2)

        mark = last_id(svc, SANA)
        await sana.write("/tickets")
        page = await new_bot_message(svc, mark, "Open tickets", SANA)
        assert "page 1 of 2" in page["text"] and "JOO-" not in page["text"]
        shown = re.findall(r"OD-\d{4}-\d{5}", page["text"])
        assert shown == by_due[:8]
        assert "overdue, was due" in page["text"] and "ago)" in page["text"]
        assert "Sana" in page["text"]
        nav = page["reply_markup"]["inline_keyboard"][-1]
        await sana.press(page["message_id"], nav[-1]["callback_data"])
        await eventually(
            lambda: "page 2 of 2" in svc.telegram.messages[(SANA, page["message_id"])]["text"]
        )
        second = svc.telegram.messages[(SANA, page["message_id"])]["text"]
        assert re.findall(r"OD-\d{4}-\d{5}", second) == by_due[8:]

        mark = last_id(svc, SANA)
        await sana.write("/mine")
        mine = await new_bot_message(svc, mark, "Your tickets", SANA)
        assert re.findall(r"OD-\d{4}-\d{5}", mine["text"]) == [refs[0], refs[2]]
        mark = last_id(svc, SANA)
        await sana.write("/overdue")
        overdue = await new_bot_message(svc, mark, "Overdue tickets", SANA)
        assert re.findall(r"OD-\d{4}-\d{5}", overdue["text"]) == by_due[:2]

        # A card in the private chat, with working buttons.
        mark = last_id(svc, SANA)
        await sana.write(f"/ticket {refs[3]}")
        card = await new_bot_message(svc, mark, "Status:", SANA)
        assert card["text"].startswith("🆕") and refs[3] in card["text"]
        await sana.press(card["message_id"], button(card, "Claim"), chat=SANA)
        await eventually(
            lambda: "claimed by Sana" in svc.telegram.messages[(SANA, card["message_id"])]["text"]
        )
        clean(svc)


async def test_prompts_time_out_cleanly_and_can_be_dropped(
    database_url: str, tmp_path: Path
) -> None:
    async with desk_service(database_url, tmp_path) as (svc, _mailbox):
        folder = Path(svc.settings.tenants_dir)
        [ref] = await seed_tickets(database_url, folder, [timedelta(days=5)])
        card = await card_of(svc, ref)
        sana = Staff(svc, SANA, "Sana")
        customer = "whatsapp:+923005500000"

        mark = last_id(svc)
        await sana.press(card["message_id"], button(card, "Reject"))
        prompt = await new_bot_message(svc, mark, "reason")
        await sana.write("cancel", reply_to_message_id=prompt["message_id"])
        await new_bot_message(svc, mark, "Dropped; nothing was done.")

        mark = last_id(svc)
        await sana.press(card["message_id"], button(card, "Reject"))
        prompt = await new_bot_message(svc, mark, "reason")
        engine = create_engine(database_url)
        try:
            async with transaction(session_factory(engine)) as session:
                row = (
                    await session.exec(
                        select(DeskPrompt).where(col(DeskPrompt.closed_at).is_(None))
                    )
                ).one()
                row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
                session.add(row)
        finally:
            await engine.dispose()
        await sana.write("We hold no data about you", reply_to_message_id=prompt["message_id"])
        await new_bot_message(svc, mark, "timed out; nothing was done")
        ticket = await ticket_row(database_url, ref)
        assert ticket.status == TicketStatus.OPEN
        assert svc.twilio.sent_messages(to=customer) == []
        prompts = await rows(database_url, DeskPrompt)
        assert sorted(p.outcome or "" for p in prompts) == ["cancelled", "expired"]
        clean(svc)


async def test_the_customer_keeps_the_dialogue_and_long_or_marked_up_texts_arrive_whole(
    database_url: str, tmp_path: Path
) -> None:
    async with desk_service(database_url, tmp_path) as (svc, _mailbox):
        folder = Path(svc.settings.tenants_dir)
        [ref] = await seed_tickets(database_url, folder, [timedelta(days=5)])
        await card_of(svc, ref)
        customer = WhatsApp(svc, "whatsapp:+923005500000")
        sana = Staff(svc, SANA, "Sana")
        long_answer = " ".join(
            f"Paragraph {n}: we checked every system for your data." for n in range(80)
        )
        await sana.write(f"/reply {ref} {long_answer}")
        await eventually(lambda: len(customer.inbox()) >= 3)
        pieces = customer.inbox()
        assert all(len(p) <= 1600 for p in pieces)
        assert " ".join(pieces).split()[-5:] == long_answer.split()[-5:]
        assert (await ticket_row(database_url, ref)).status == TicketStatus.AWAITING_REQUESTER

        # Words the dialogue knows still work while staff wait for an answer.
        status = await customer.say("status")
        assert ref in status
        assert (await ticket_row(database_url, ref)).status == TicketStatus.AWAITING_REQUESTER

        # The answer, with characters that mean something in HTML, reaches staff as written.
        mark = last_id(svc)
        await customer.say('My old address is <Flat 3> & Co, "Gulberg"')
        relayed = await new_bot_message(svc, mark, "the customer wrote")
        assert relayed["text"].endswith('My old address is <Flat 3> & Co, "Gulberg"')
        assert (await ticket_row(database_url, ref)).status == TicketStatus.IN_PROGRESS

        # More free text while in progress also goes to the ticket, acknowledged once.
        before = len(customer.inbox())
        mark = last_id(svc)
        await svc.post_whatsapp(
            inbound_whatsapp_form(from_=customer.number, to=OD_NUMBER, body="One more thing")
        )
        await new_bot_message(svc, mark, "One more thing")
        assert len(customer.inbox()) == before

        # A photo of a document and a PDF: downloaded with Twilio's credentials, kept sealed,
        # and uploaded to staff under the card (a photo as a photo, the PDF as a document).
        url = svc.twilio.add_media(b"\xff\xd8 a scan", "image/jpeg")
        pdf = svc.twilio.add_media(b"%PDF-1.4 a letter", "application/pdf")
        form = inbound_whatsapp_form(
            from_=customer.number,
            to=OD_NUMBER,
            media=[(url, "image/jpeg"), (pdf, "application/pdf")],
        )
        assert (await svc.post_whatsapp(form)).status == 200
        sent = await eventually(lambda: svc.telegram.calls_to("sendPhoto"))
        assert sent[0].params["photo"].data == b"\xff\xd8 a scan"
        assert ref in sent[0].params["caption"]
        assert sent[0].params["chat_id"] == STAFF_CHAT
        sent = await eventually(lambda: svc.telegram.calls_to("sendDocument"))
        assert sent[0].params["document"].data == b"%PDF-1.4 a letter"
        assert ref in sent[0].params["caption"]
        clean(svc)
