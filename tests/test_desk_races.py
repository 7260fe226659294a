"""The staff desk when Telegram is quicker than our bookkeeping: a staff member answers a
force-reply prompt before the outbox has recorded the prompt's message id."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from handlers.telegram import TelegramSender
from storage.enums import TicketStatus
from tests.service import eventually
from tests.test_desk import (
    SANA,
    STAFF_CHAT,
    Staff,
    WhatsApp,
    button,
    card_of,
    clean,
    desk_service,
    last_id,
    new_bot_message,
    seed_tickets,
    ticket_row,
)

SLOW = 1.5  # seconds between Telegram taking a prompt and the outbox recording it


def slow_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer to a prompt's sendMessage reaches us late (a slow network, a busy worker)."""
    send = TelegramSender.send

    async def late(self: TelegramSender, recipient: str, payload: Mapping[str, Any]) -> Any:
        result = await send(self, recipient, payload)
        if "prompt" in (payload.get("hook") or {}):
            await asyncio.sleep(SLOW)
        return result

    monkeypatch.setattr(TelegramSender, "send", late)


@pytest.mark.parametrize("forum", [False, True], ids=["group", "forum"])
async def test_an_answer_to_a_prompt_not_yet_recorded_waits_for_it(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forum: bool
) -> None:
    slow_prompts(monkeypatch)
    async with desk_service(database_url, tmp_path) as (svc, _mailbox):
        if forum:
            svc.telegram.add_chat(STAFF_CHAT, chat_type="supergroup", is_forum=True)
        folder = Path(svc.settings.tenants_dir)
        [ref] = await seed_tickets(database_url, folder, [timedelta(days=5)])
        card = await card_of(svc, ref)
        thread = card.get("message_thread_id")
        assert (thread is not None) == forum
        customer = WhatsApp(svc, "whatsapp:+923005500000")
        sana = Staff(svc, SANA, "Sana")
        due_before = (await ticket_row(database_url, ref)).due_at

        mark = last_id(svc)
        await sana.press(card["message_id"], button(card, "Extend"))
        prompt = await new_bot_message(svc, mark, "reason for extending")
        # At once, as the fake shows the prompt: its id is not in our database yet.
        await sana.write(
            "The archive takes time to search",
            reply_to_message_id=prompt["message_id"],
            message_thread_id=thread,
        )
        told = await eventually(
            lambda: next((t for t in customer.inbox() if "need more time" in t), None),
            timeout=30,
        )
        assert "The archive takes time to search" in told
        assert not any(t.startswith("Message from") for t in customer.inbox())
        ticket = await ticket_row(database_url, ref)
        assert ticket.due_at and due_before and ticket.due_at > due_before
        assert ticket.status == TicketStatus.OPEN
        clean(svc)
