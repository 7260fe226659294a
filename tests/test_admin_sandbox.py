"""The sandbox: an admin chats as a WhatsApp or Telegram customer through the real inbox,
dialogue and outbox; sandbox customers' messages never reach a provider."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bot.outbox import LEASE, OutboxWorker, ReconcilingSender, SendError
from bot.sandbox import SandboxRouter, is_sandbox_address, new_address, route
from bot.settings import Settings
from handlers.whatsapp import WhatsAppSender
from storage import outbox
from storage.admin_models import SandboxChat
from storage.db import SessionFactory, transaction
from storage.enums import TicketStatus
from storage.models import InboundMessage, OutboundMessage, Suppression, Ticket, utcnow
from tests.fakes.twilio_api import FakeTwilio
from tests.test_admin_support import VIEWER, admin_desk, rows

NO_CHANNELS: dict[str, Any] = {
    "telegram_bot_token": None,
    "telegram_webhook_secret": None,
    "twilio_account_sid": None,
    "twilio_auth_token": None,
}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, recipient: str, payload: Mapping[str, Any]) -> str | None:
        self.sent.append(recipient)
        return "real-id"


def test_sandbox_addresses_are_ones_no_customer_can_have() -> None:
    for _ in range(50):
        wa, tg = new_address("whatsapp"), new_address("telegram")
        assert re.fullmatch(r"whatsapp:\+999\d{9}", wa) and is_sandbox_address("whatsapp", wa)
        assert int(tg) >= 2**52 and is_sandbox_address("telegram", tg)
    assert not is_sandbox_address("whatsapp", "whatsapp:+923001234567")
    assert not is_sandbox_address("telegram", "123456789")
    assert not is_sandbox_address("telegram", "-1001234567890")
    assert not is_sandbox_address("email", "whatsapp:+999123")


async def test_the_router_keeps_sandbox_messages_from_providers() -> None:
    real = Recorder()
    senders = route({"whatsapp": real, "email": Recorder()})
    assert isinstance(senders["whatsapp"], SandboxRouter)
    sandbox_id = await senders["whatsapp"].send("whatsapp:+999000000001", {"text": "hi"})
    assert sandbox_id is not None and sandbox_id.startswith("sandbox-")
    assert real.sent == []
    assert await senders["whatsapp"].send("whatsapp:+923001234567", {"text": "hi"}) == "real-id"
    assert real.sent == ["whatsapp:+923001234567"]
    # No Telegram credentials: a sandbox chat is still answered, a real chat waits (retried).
    assert (await senders["telegram"].send(str(2**52 + 5), {"text": "x"}) or "").startswith(
        "sandbox-"
    )
    with pytest.raises(SendError) as refused:
        await senders["telegram"].send("-1001", {"text": "x"})
    assert refused.value.retryable


class Reconciling(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def find_sent(
        self, recipient: str, payload: Mapping[str, Any], since: datetime
    ) -> str | None:
        self.asked.append(recipient)
        return "found-id"


async def test_the_router_keeps_a_reconciling_sender_reconciling() -> None:
    real = Reconciling()
    senders = route({"whatsapp": real, "telegram": Recorder()})
    assert isinstance(senders["whatsapp"], SandboxRouter)
    assert isinstance(senders["whatsapp"], ReconcilingSender)
    since = datetime.now(UTC)
    assert (
        await senders["whatsapp"].find_sent(  # type: ignore[attr-defined]
            "whatsapp:+923001234567", {"text": "hi"}, since
        )
        == "found-id"
    )
    # A sandbox customer's message never reaches the provider, not even to ask.
    assert (
        await senders["whatsapp"].find_sent(  # type: ignore[attr-defined]
            "whatsapp:+999000000001", {"text": "hi"}, since
        )
        is None
    )
    assert real.asked == ["whatsapp:+923001234567"]
    # A sender that cannot reconcile does not pretend to.
    assert not isinstance(senders["telegram"], ReconcilingSender)
    assert not isinstance(route({})["telegram"], ReconcilingSender)


async def test_behind_the_router_a_message_twilio_already_has_is_not_sent_again(
    sessions: SessionFactory,
) -> None:
    """Crash reconciliation of the outbox still works with the sandbox router in front."""
    to, sender_number = "whatsapp:+923001230000", "whatsapp:+14155238881"
    async with FakeTwilio() as twilio:
        settings = Settings(
            _env_file=None,
            twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token,
            twilio_api_base_url=twilio.url,
        )
        sender = WhatsAppSender(settings)
        try:
            payload = {"from": sender_number, "text": "Your request is on file."}
            async with transaction(sessions) as session:
                outbox.enqueue(session, channel="whatsapp", recipient=to, payload=payload)
            start = utcnow()
            # A worker claims it, Twilio takes it, and the worker dies before recording that.
            async with transaction(sessions) as session:
                await outbox.claim(session, worker="dead", now=start, lease=LEASE, limit=5)
            await sender.send(to, payload)
            later = start + LEASE + timedelta(seconds=1)
            worker = OutboxWorker(sessions, route({"whatsapp": sender}), now=lambda: later)
            assert await worker.run_once() == 1
            assert len(twilio.sent_messages(to=to)) == 1
            (row,) = await _all(sessions, OutboundMessage)
            assert row.status == "sent"
            assert row.provider_id == twilio.sent_messages(to=to)[0].response["sid"]
        finally:
            await sender.close()


async def _all(sessions: SessionFactory, model: Any) -> list[Any]:
    async with sessions() as session:
        return list((await session.exec(select(model))).all())


async def _say(browser: Any, chat: str, text: str | None = None, button: str | None = None) -> str:
    data = {"text": text} if text is not None else {"button": button or ""}
    response, page = await browser.post(chat, data)
    assert response.status == 200, page
    return page


async def test_whatsapp_sandbox_files_an_erasure_request_through_the_real_engine(
    database_url: str, tmp_path: Path
) -> None:
    async with admin_desk(database_url, tmp_path, **NO_CHANNELS) as desk, desk.browser() as browser:
        _, page = await browser.get("/admin/sandbox")
        assert 'value="whatsapp"' in page and 'value="telegram"' in page
        response, page = await browser.post(
            "/admin/sandbox",
            {"tenant": "optician-dynamics", "channel": "whatsapp", "language": "en"},
        )
        assert response.status == 200 and re.search(r"/admin/sandbox/\d+$", str(response.url))
        chat = str(response.url).removeprefix(desk.url)
        page = await _say(browser, chat, "Please delete my data")
        assert "Is that right" in page
        page = await _say(browser, chat, "yes")
        assert "email" in page.lower()
        page = await _say(browser, chat, "sandbox.customer@example.com")
        code = re.search(r"your code is (\d{6})", page)
        assert code, page
        page = await _say(browser, chat, code.group(1))
        ref = re.search(r"OD-\d{4}-\d{5}", page)
        assert ref, page
        # What staff receive is shown too: the card to the staff chat, queued while
        # Telegram has no credentials.
        staff = re.search(r"staff → <bdi dir=\"ltr\">-1000000000001</bdi> · ([^<]+)<", page)
        assert staff and staff.group(1).split()[0] in ("pending", "sending"), page  # no credentials
        # The ticket is a real ticket: in the list, marked as a sandbox one on its page.
        _, listing = await browser.get("/admin/tickets")
        assert ref.group(0) in listing
        _, ticket_page = await browser.get(f"/admin/tickets/{ref.group(0)}")
        assert ">sandbox<" in ticket_page
        # Every reply to the sandbox customer left the outbox as delivered, without a
        # provider (the router recorded it).
        (chat_row,) = await rows(database_url, SandboxChat)
        assert is_sandbox_address("whatsapp", chat_row.address)
        for _ in range(300):
            queued = await rows(database_url, OutboundMessage)
            replies = [m for m in queued if m.recipient == chat_row.address]
            if replies and all(m.status == "sent" for m in replies):
                break
            await asyncio.sleep(0.05)
        assert replies and all((m.provider_id or "").startswith("sandbox-") for m in replies)
    tickets = await rows(database_url, Ticket)
    assert [(t.kind, t.status) for t in tickets] == [("erasure", TicketStatus.OPEN)]
    inbound = await rows(database_url, InboundMessage)
    assert len(inbound) == 4 and all(m.processed_at is not None for m in inbound)


async def test_telegram_sandbox_with_buttons(database_url: str, tmp_path: Path) -> None:
    async with admin_desk(database_url, tmp_path, **NO_CHANNELS) as desk, desk.browser() as browser:
        response, page = await browser.post(
            "/admin/sandbox", {"tenant": "jooptics", "channel": "telegram", "language": "en"}
        )
        chat = str(response.url).removeprefix(desk.url)
        assert "/start jooptics" in page  # arrived through the business's start link
        page = await _say(browser, chat, "STOP")
        assert "STOP" in page
        page = await _say(browser, chat, "I want to make a complaint")
        page = await _say(browser, chat, "You never answered my letter")
        buttons = re.findall(r'name="button" value="([^"]+)"', page)
        assert buttons, page
        yes = (
            next(b for b in buttons if "yes" in b.lower())
            if any("yes" in b.lower() for b in buttons)
            else buttons[0]
        )
        page = await _say(browser, chat, button=yes)
        assert re.search(r"JOO-\d{4}-\d{5}", page), page
    (chat_row,) = await rows(database_url, SandboxChat)
    suppressions = await rows(database_url, Suppression)
    assert [(s.tenant, s.address) for s in suppressions] == [("jooptics", chat_row.address)]
    kinds = sorted(t.kind for t in await rows(database_url, Ticket))
    assert kinds == ["complaint", "marketing_opt_out"]


async def test_the_sandbox_refuses_configured_channels_and_viewers(
    database_url: str, tmp_path: Path
) -> None:
    async with admin_desk(database_url, tmp_path) as desk:  # both channels have credentials
        async with desk.browser() as browser:
            _, page = await browser.get("/admin/sandbox")
            assert "Both channels have provider credentials" in page
            response, page = await browser.post(
                "/admin/sandbox", {"tenant": "jooptics", "channel": "telegram"}
            )
            assert response.status == 400 and "credentials" in page
        async with desk.browser(VIEWER) as viewer:
            response, _ = await viewer.get("/admin/sandbox")
            assert response.status == 403
    assert await rows(database_url, SandboxChat) == []
