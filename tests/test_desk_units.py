"""The staff desk's parts on their own: cards edited in place through the outbox, forum
topics learnt, digests when the chat is busy, sealed files and download links, the sender's
pacing and splitting against the loopback Bot API."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import parse_duration
from bot.customers import import_customers, read_rows
from bot.desk import (
    DIGEST_MAX,
    LINK_DOWNLOADS,
    Desk,
    DownloadState,
    _duration_and_reason,
    parse_command,
)
from bot.messages import Media
from bot.outbox import SendError
from bot.settings import Settings
from bot.tenants import load_tenants
from handlers.telegram import SendWindows, TelegramSender, make_bot, split_text
from storage.db import SessionFactory, transaction
from storage.desk_models import DeskCard, DeskChat, DeskFile, DownloadRecord
from storage.enums import OutboxStatus, TicketStatus
from storage.models import Conversation, OutboundMessage, Requester, Ticket, VerificationCode
from storage.tickets import create_ticket
from tests.fakes.telegram_api import FakeTelegram
from tests.test_desk import STAFF_CHAT, desk_tenants

NOW = datetime.now(UTC).replace(microsecond=0)
CUSTOMER = "whatsapp:+923001230000"


class Files:
    """A FileFetcher with fixed bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def fetch(self, file_id: str, *, limit: int) -> bytes:
        return self.data


def make_desk(tmp_path: Path, data: bytes = b"") -> Desk:
    return Desk(
        load_tenants(desk_tenants(tmp_path)),
        b"unit-secret",
        "https://desk.example.test",
        files=Files(data),
    )


async def seed(session: AsyncSession, *, number: int = 0) -> Ticket:
    requester = Requester(tenant="optician-dynamics")
    session.add(requester)
    await session.flush()
    session.add(
        Conversation(
            channel="whatsapp",
            address=f"{CUSTOMER[:-3]}{number:03d}",
            tenant="optician-dynamics",
            requester_id=requester.id,
            last_inbound_at=NOW,
        )
    )
    return await create_ticket(
        session,
        tenant="optician-dynamics",
        ref_prefix="OD",
        kind="access",
        channel="whatsapp",
        received_at=NOW,
        requester_id=requester.id,
        due_at=NOW + timedelta(days=9),
        clock_started_at=NOW,
    )


async def queue(session: AsyncSession) -> list[OutboundMessage]:
    return list(await session.exec(select(OutboundMessage).order_by(col(OutboundMessage.id))))


async def set_status(session: AsyncSession, row: OutboundMessage, status: OutboxStatus) -> None:
    row.status = status
    session.add(row)
    await session.flush()


# --- cards in place -----------------------------------------------------------------------


async def test_a_card_is_edited_in_place_whatever_its_message_is_doing(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    desk = make_desk(tmp_path)
    async with transaction(sessions) as session:
        session.add(DeskChat(chat_id=STAFF_CHAT, forum=False, updated_at=NOW))
        ticket = await seed(session)
        await desk.ticket_changed(session, ticket, NOW)
        [create] = await queue(session)
        assert create.payload["hook"] == {"card": 1} and "not claimed" in create.payload["text"]

        # Still queued: the change rewrites the queued message; nothing new is queued.
        ticket.assignee_user_id, ticket.assignee_name = 701, "Sana"
        await desk.refresh(session, ticket, NOW)
        [create] = await queue(session)
        assert "claimed by Sana" in create.payload["text"]

        # In flight: the card is marked, and the send hook edits it once it has its id.
        await set_status(session, create, OutboxStatus.SENDING)
        ticket.status = TicketStatus.IN_PROGRESS
        await desk.refresh(session, ticket, NOW)
        assert len(await queue(session)) == 1
        card = (await session.exec(select(DeskCard))).one()
        assert card.dirty
        await set_status(session, create, OutboxStatus.SENT)
        await desk.after_send(session, create, "42", None)
        _create, edit = await queue(session)
        assert (card.message_id, card.dirty, ticket.staff_message_id) == (42, False, 42)
        assert edit.payload["method"] == "edit_message_text" and edit.payload["message_id"] == 42
        assert "in progress" in edit.payload["text"]

        # An edit still queued takes later changes too.
        ticket.assignee_name = "Sana K."
        await desk.refresh(session, ticket, NOW)
        assert len(await queue(session)) == 2 and "Sana K." in edit.payload["text"]

        # The message was deleted in the chat: the card is posted again.
        await set_status(session, edit, OutboxStatus.FAILED)
        await desk.after_send(
            session, edit, None, "telegram bad request: message to edit not found"
        )
        again = (await queue(session))[-1]
        assert again.payload.get("method", "send_message") == "send_message"
        assert "Sana K." in again.payload["text"] and card.message_id is None


async def test_a_forum_gets_a_topic_per_ticket_and_a_plain_group_is_learnt_once(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    desk = make_desk(tmp_path)
    async with transaction(sessions) as session:
        first = await seed(session, number=1)
        await desk.ticket_changed(session, first, NOW)
        [topic] = await queue(session)
        assert topic.payload["method"] == "create_forum_topic"
        assert topic.payload["name"].startswith(first.ref)
        await set_status(session, topic, OutboxStatus.SENT)
        await desk.after_send(session, topic, "77", None)
        card_row = (await queue(session))[-1]
        assert card_row.payload["thread_id"] == 77 and first.staff_thread_id == 77
        assert (await session.get(DeskChat, STAFF_CHAT)).forum is True  # type: ignore[union-attr]

        # Another staff chat state: not a forum. The failed attempt posts the card anyway.
        chat = await session.get(DeskChat, STAFF_CHAT)
        assert chat is not None
        chat.forum = None
        second = await seed(session, number=2)
        await set_status(session, card_row, OutboxStatus.SENT)
        await desk.ticket_changed(session, second, NOW)
        topic = (await queue(session))[-1]
        assert topic.payload["method"] == "create_forum_topic"
        await set_status(session, topic, OutboxStatus.FAILED)
        await desk.after_send(session, topic, None, "telegram bad request: the chat is not a forum")
        plain = (await queue(session))[-1]
        assert "thread_id" not in plain.payload and second.ref in plain.payload["text"]
        assert chat.forum is False
        await set_status(session, plain, OutboxStatus.SENT)
        third = await seed(session, number=3)
        await desk.ticket_changed(session, third, NOW)
        assert (await queue(session))[-1].payload.get("method", "send_message") == "send_message"


TOPIC_CALLS = ("edit_forum_topic", "close_forum_topic", "reopen_forum_topic")


async def topic_calls(session: AsyncSession) -> list[OutboundMessage]:
    return [r for r in await queue(session) if r.payload.get("method") in TOPIC_CALLS]


def topic_call(row: OutboundMessage) -> tuple[str, Any]:
    return row.payload["method"], row.payload.get("name")


async def test_a_topic_is_renamed_and_closed_with_its_ticket_once_and_reopened_with_it(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    desk = make_desk(tmp_path)
    async with FakeTelegram() as fake:
        fake.add_chat(STAFF_CHAT, chat_type="supergroup", is_forum=True)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, telegram_bot_token=fake.token, telegram_api_base_url=fake.url
        )
        async with make_bot(settings) as bot, transaction(sessions) as session:
            sender = TelegramSender(bot)

            async def send(row: OutboundMessage) -> str | None:
                sent = await sender.send(row.recipient, row.payload)
                await set_status(session, row, OutboxStatus.SENT)
                return sent

            ticket = await seed(session)
            await desk.ticket_changed(session, ticket, NOW)
            [create] = await queue(session)
            thread = await send(create)
            await desk.after_send(session, create, thread, None)
            assert thread is not None and ticket.staff_thread_id == int(thread)
            topic = (STAFF_CHAT, int(thread))
            named = f"{ticket.ref} · Access (copy of data)"
            assert fake.topics[topic] == named and await topic_calls(session) == []

            # Resolved: renamed with the outcome, then closed; nothing more on later changes.
            ticket.status, ticket.closed_at = TicketStatus.RESOLVED, NOW
            await desk.refresh(session, ticket, NOW)
            await desk.ticket_changed(session, ticket, NOW)
            calls = await topic_calls(session)
            assert [topic_call(r) for r in calls] == [
                ("edit_forum_topic", f"✓ {named}"), ("close_forum_topic", None)
            ]  # fmt: skip
            assert {r.payload["thread_id"] for r in calls} == {int(thread)}
            for row in calls:
                await send(row)
            assert fake.topics[topic] == f"✓ {named}" and topic in fake.closed_topics

            # Opened again (by whatever path): the topic too, under its first name.
            ticket.status, ticket.closed_at = TicketStatus.IN_PROGRESS, None
            await desk.refresh(session, ticket, NOW)
            calls = (await topic_calls(session))[2:]
            assert [topic_call(r) for r in calls] == [
                ("reopen_forum_topic", None), ("edit_forum_topic", named)
            ]  # fmt: skip
            for row in calls:
                await send(row)
            assert fake.topics[topic] == named and topic not in fake.closed_topics

            # Withdrawn by the customer: closed again, marked as withdrawn.
            ticket.status, ticket.closed_at = TicketStatus.CANCELLED, NOW
            await desk.ticket_changed(session, ticket, NOW)
            await desk.ticket_changed(session, ticket, NOW)
            calls = (await topic_calls(session))[4:]
            assert [topic_call(r) for r in calls] == [
                ("edit_forum_topic", f"↩ {named}"), ("close_forum_topic", None)
            ]  # fmt: skip
            for row in calls:
                await send(row)
            assert fake.topics[topic] == f"↩ {named}" and topic in fake.closed_topics

            # A ticket closed while its topic was being made: closed as soon as it exists.
            late = await seed(session, number=1)
            await desk.ticket_changed(session, late, NOW)
            create = (await queue(session))[-1]
            assert create.payload["method"] == "create_forum_topic"
            late.status, late.closed_at = TicketStatus.REJECTED, NOW
            await desk.refresh(session, late, NOW)
            thread = await send(create)
            await desk.after_send(session, create, thread, None)
            calls = (await topic_calls(session))[6:]
            assert [topic_call(r) for r in calls] == [
                ("edit_forum_topic", f"✗ {late.ref} · Access (copy of data)"),
                ("close_forum_topic", None),
            ]
            for row in calls:
                await send(row)
            assert (STAFF_CHAT, int(thread or 0)) in fake.closed_topics
        assert fake.violations == [] and fake.rate_violations == []


async def test_a_busy_chat_gets_new_tickets_in_digests(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    desk = make_desk(tmp_path)
    async with transaction(sessions) as session:
        session.add(DeskChat(chat_id=STAFF_CHAT, forum=False, updated_at=NOW))
        tickets = [await seed(session, number=n) for n in range(3 + DIGEST_MAX + 2)]
        for ticket in tickets:
            await desk.ticket_changed(session, ticket, NOW)
        rows = await queue(session)
        cards = [r for r in rows if "Status:" in r.payload["text"]]
        digests = [r for r in rows if "new requests" in r.payload["text"]]
        assert len(cards) == 3 and len(digests) == 2
        assert all(t.ref in digests[0].payload["text"] for t in tickets[3 : 3 + DIGEST_MAX])
        assert f"{DIGEST_MAX} new requests" in digests[0].payload["text"]
        buttons = digests[0].payload["reply_markup"]["inline_keyboard"]
        assert len(buttons) == DIGEST_MAX and len(digests[0].payload["text"]) < 4096

        # A digest on its way takes no more tickets; the next one starts a new digest.
        await set_status(session, digests[1], OutboxStatus.SENDING)
        late = await seed(session, number=99)
        await desk.ticket_changed(session, late, NOW)
        newest = (await queue(session))[-1]
        assert "1 new request" in newest.payload["text"] and late.ref in newest.payload["text"]
        assert late.ref not in digests[1].payload["text"]

        # Once sent, each ticket points at the digest it is listed in.
        await set_status(session, digests[0], OutboxStatus.SENT)
        await desk.after_send(session, digests[0], "500", None)
        assert {t.staff_message_id for t in tickets[3 : 3 + DIGEST_MAX]} == {500}


async def test_a_card_says_whether_a_proven_identity_is_a_known_customer(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    desk = make_desk(tmp_path)
    rows = read_rows(
        [
            "name,email,phone,customer id",
            "Amina Khan,AMINA@example.com,,C-7",
            "Bilal Ahmed,,+92 300 123 0001,C-8",
            "Sara Malik,sara@example.com,,C-9",
        ]
    )
    async with transaction(sessions) as session:
        await import_customers(session, tenant="optician-dynamics", rows=rows, now=NOW)
        by_email, by_number, unproven, stranger = [await seed(session, number=n) for n in range(4)]
        for ticket, email, proven in (
            (by_email, "amina@example.com", True),
            (unproven, "sara@example.com", False),  # a code was sent but never entered
            (stranger, "nobody@example.com", True),
        ):
            session.add(
                VerificationCode(
                    ticket_id=ticket.id or 0,
                    email=email,
                    code_hash="x",
                    expires_at=NOW,
                    verified_at=NOW if proven else None,
                )
            )
            ticket.verified_at = NOW if proven else None
        await session.flush()

        async def customer_line(ticket: Ticket) -> str:
            text, _markup = await desk.render_card(session, ticket, NOW)
            return next(line for line in text.splitlines() if line.startswith("Customer:"))

        assert "known customer (customer id C-7, by the verified email)" in await customer_line(
            by_email
        )
        assert "known customer (customer id C-8, by their WhatsApp number)" in (
            await customer_line(by_number)
        )
        assert "not on the customer list" in await customer_line(unproven)
        assert "not on the customer list · first request" in await customer_line(stranger)
        text, _markup = await desk.render_card(session, by_email, NOW)
        assert "Identity: ✅ verified" in text
        text, _markup = await desk.render_card(session, by_number, NOW)
        assert "Identity: not required" in text

        # A second request of the same person says so.
        again = await create_ticket(
            session,
            tenant="optician-dynamics",
            ref_prefix="OD",
            kind="erasure",
            channel="whatsapp",
            received_at=NOW,
            requester_id=stranger.requester_id,
            due_at=NOW + timedelta(days=9),
            clock_started_at=NOW,
        )
        assert "· 1 earlier request" in await customer_line(again)


# --- files and links ----------------------------------------------------------------------


async def test_files_are_sealed_and_links_expire_run_out_and_resist_tampering(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    secret_data = b"customer export: Amina Khan, 3 orders"
    desk = make_desk(tmp_path, secret_data)
    async with transaction(sessions) as session:
        ticket = await seed(session)
        stored = await desk.store_file(
            session, ticket, Media(url="file-1", content_type="text/csv"), user_id=701
        )
        assert secret_data not in bytes(stored.sealed) and stored.name.endswith(".csv")
        assert desk.open_file(stored) == secret_data
        token, link = await desk.new_link(session, stored, NOW)
        assert len(token.split(".")[0]) >= 22  # 128 random bits
        assert link.token_hash != token and token not in str(link.model_dump())

    for attempt in range(1, LINK_DOWNLOADS + 1):
        async with transaction(sessions) as session:
            look = await desk.download(session, token, NOW)
            assert look.state is DownloadState.READY and look.data == b""
            assert f"Downloads left: {LINK_DOWNLOADS - attempt + 1}" in look.body
            got = await desk.download(session, token, NOW, take=True, client="203.0.113.0/24")
            assert got.state is DownloadState.READY and got.data == secret_data
    async with transaction(sessions) as session:
        assert (await desk.download(session, token, NOW, take=True)).state is DownloadState.GONE
        records = list(await session.exec(select(DownloadRecord)))
        assert len(records) == LINK_DOWNLOADS and records[0].client == "203.0.113.0/24"

        fresh, _link = await desk.new_link(session, stored, NOW)
        later = NOW + timedelta(days=7, seconds=1)
        assert (await desk.download(session, fresh, later)).state is DownloadState.GONE
        body, stamp, signature = fresh.split(".")
        for forged in (
            f"{body}.{stamp}.{signature[:-2]}xx",
            f"{body[:-2]}xx.{stamp}.{signature}",
            "not-a-token",
            f"{body}.{stamp}",
        ):
            assert (await desk.download(session, forged, NOW)).state is DownloadState.NOT_FOUND
        other = Desk(desk.tenants, b"another-secret")
        assert (await other.download(session, fresh, NOW)).state is DownloadState.NOT_FOUND

        # A sealed file that was altered (or moved to another ticket) is not served.
        row = (await session.exec(select(DeskFile))).one()
        row.sealed = bytes(row.sealed[:-1]) + bytes([row.sealed[-1] ^ 1])
        session.add(row)
        result = await desk.download(session, fresh, NOW, take=True)
        assert result.state is DownloadState.NOT_FOUND


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/claim OD-2026-00001", ("claim", "OD-2026-00001")),
        ("/reply@rightsdesk_bot OD-2026-00001 Hello there", ("reply", "OD-2026-00001 Hello there")),
        ("/TICKETS", ("tickets", "")),
        ("hello", None),
        ("/", None),
    ],
)
def test_commands_are_parsed(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_command(text) == expected


def test_an_extension_may_name_its_length_before_the_reason() -> None:
    assert _duration_and_reason("10 business days the export is large") == (
        parse_duration("10 business days"),
        "the export is large",
    )
    assert _duration_and_reason("2 months waiting for the archive") == (
        parse_duration("2 months"),
        "waiting for the archive",
    )
    assert _duration_and_reason("the export is large") == (None, "the export is large")


# --- the sender: Telegram's limits, long texts ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_send_windows_keep_to_telegrams_published_limits() -> None:
    clock = Clock()
    windows = SendWindows(clock)
    assert all(windows.reserve(-100) == 0 for _ in range(20))
    assert windows.reserve(-100) == pytest.approx(61.0)  # 20 a minute to one group
    assert windows.reserve(-200) == 0  # another group has its own minute
    clock.now += 61.0
    assert windows.reserve(-100) == 0

    clock.now += 100
    assert windows.reserve(7) == 0
    assert windows.reserve(7) == pytest.approx(1.1)  # about one a second to one person
    assert all(windows.reserve(1000 + n) == 0 for n in range(29))
    assert windows.reserve(5000) > 0  # 30 a second overall
    clock.now += 1.1
    assert windows.reserve(5000) == 0


def test_a_slot_is_counted_from_its_own_answer_whatever_the_order() -> None:
    """Thirty messages to thirty people go out at once; the first is answered last. The
    overall window runs from each message's own answer (Telegram counted it somewhere
    between leaving and answering), not only the newest slot's."""
    clock = Clock()
    windows = SendWindows(clock)
    assert all(windows.reserve(1000 + n) == 0 for n in range(30))
    clock.now += 0.5
    for n in range(1, 30):
        windows.settle(1000 + n)  # answered after half a second
    clock.now += 0.4
    windows.settle(1000)  # the first message's answer came last, 0.9 s after it left
    clock.now += 0.3  # 1.2 s after they left, 0.7 s after the 29 answers
    assert windows.reserve(5000) == pytest.approx(0.4)  # 1.1 s from the answers: at 1.6 s
    clock.now += 0.41
    assert windows.reserve(5000) == 0


def _visible(piece: str) -> str:
    return html.unescape(re.sub(r"<[^<>]+>", "", piece))


def test_long_texts_are_split_at_telegrams_limit_without_breaking_html() -> None:
    words = " ".join(f"word{n} &amp; <b>bold{n}</b>" for n in range(700))
    text = f"<b>OD-2026-00001</b> · the customer wrote:\n<i>{words}</i>\n" + "line\n" * 300
    pieces = split_text(text, 4096, html=True)
    assert len(pieces) > 1 and all(len(p) <= 4096 for p in pieces)
    for piece in pieces:
        opened = re.findall(r"<([a-z]+)>", piece)
        closed = re.findall(r"</([a-z]+)>", piece)
        assert sorted(opened) == sorted(closed)
        assert not re.search(r"&[a-z]*$", piece) and "<" not in re.sub(r"<[^<>]+>", "", piece)
    assert " ".join(_visible(p) for p in pieces).split() == _visible(text).split()
    plain = "x" * 9000
    assert [len(p) for p in split_text(plain)] == [4096, 4096, 808]


async def test_the_sender_paces_a_group_splits_long_texts_and_asks_with_force_reply() -> None:
    async with FakeTelegram() as fake:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, telegram_bot_token=fake.token, telegram_api_base_url=fake.url
        )
        bot = make_bot(settings)
        async with bot:
            sender = TelegramSender(bot)
            group = str(STAFF_CHAT)
            for n in range(20):
                await sender.send(group, {"text": f"card {n}"})
            with pytest.raises(SendError) as waiting:
                await sender.send(group, {"text": "card 21"})
            assert waiting.value.retryable and (waiting.value.retry_after or 0) > 55

            long_text = "<b>OD-2026-00001</b> " + html.escape("a < b & c ") * 900
            first = await sender.send("4242", {"text": long_text, "parse_mode": "HTML"})
            parts = fake.sent_messages(chat_id=4242)
            expected = split_text(long_text, html=True)
            assert len(parts) == len(expected) > 1
            assert [c.params["text"] for c in parts] == expected
            assert first == str(parts[0].result["message_id"])
            asked: dict[str, Any] = {
                "text": "Reply to this message",
                "reply_markup": {"force_reply": True, "selective": True},
                "reply_to": 999,  # gone: sent anyway
            }
            await sender.send("4243", asked)
            call = fake.sent_messages(chat_id=4243)[0]
            assert call.params["reply_markup"]["force_reply"] is True
            assert fake.violations == [] and fake.rate_violations == []


def test_a_long_text_waits_until_all_its_pieces_fit_in_the_groups_minute() -> None:
    clock = Clock()
    windows = SendWindows(clock)
    for _ in range(18):
        windows.reserve(-100)
    assert windows.room_wait(-100, 2) == 0
    assert windows.room_wait(-100, 3) == pytest.approx(61.0)
    assert windows.room_wait(4242, 3) == 0


@pytest.mark.parametrize("language", ["ar", "ur"])
def test_every_customer_text_of_the_desk_is_translated_with_its_placeholders(
    language: str,
) -> None:
    import bot.desk as desk_module
    from bot.i18n import translations

    texts = [
        desk_module.STAFF_MESSAGE, desk_module.FILE_CAPTION, desk_module.FILE_LINK,
        desk_module.RESOLVED, desk_module.RESOLVED_NOTE, desk_module.REJECTED,
        desk_module.REGULATOR_UNNAMED, desk_module.ANSWER_RECEIVED, desk_module.MESSAGE_RECEIVED,
        desk_module.PAGE_TITLE, desk_module.PAGE_BODY, desk_module.PAGE_BUTTON,
        desk_module.PAGE_GONE,
    ]  # fmt: skip
    catalog = translations(language)
    for text in texts:
        translated = catalog.gettext(text)
        assert translated != text, f"{language}: not translated: {text!r}"
        assert set(re.findall(r"\{\w+\}", translated)) == set(re.findall(r"\{\w+\}", text))
        assert not re.search(r"[A-Za-z]{4,}", re.sub(r"\{\w+\}", "", translated)), translated
