"""Every request type, on WhatsApp and on Telegram, from first message to the filed ticket (or
the opt-out), through the webhooks, the real clients, the loopback fakes and a real SMTP
server. The driver answers whatever the dialogue asks, reading its step from the database."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from storage.crypto import blind_index
from storage.db import create_engine, session_factory
from storage.enums import RequestType, TicketStatus
from storage.models import ConsentRecord, Conversation, Suppression, Ticket
from tests.conftest import TENANTS_DIR
from tests.service import eventually, running_service
from tests.test_intake import TelegramCustomer, WhatsAppCustomer, _code_in
from tests.test_mail import smtp_server

ALL_TYPES = """
[requests]
access = "30 days"
rectification = "30 days"
erasure = "30 days"
portability = "30 days"
restriction = "30 days"
objection = "30 days"
consent_withdrawal = "30 days"
marketing_opt_out = "immediate"
cookie_opt_out = "15 business days"
complaint = "30 days"
"""

NUMBER = "whatsapp:+14155238882"  # jooptics' sender


def tenants_offering_everything(tmp_path: Path) -> Path:
    """The shipped tenants, with Jooptics offering all ten request types."""
    folder = tmp_path / "tenants"
    folder.mkdir()
    for path in TENANTS_DIR.glob("*.toml"):
        text = path.read_text()
        if path.stem == "jooptics":
            start = text.index("[requests]")
            end = text.index("\n[", start + 1)
            text = text[:start] + ALL_TYPES.strip() + "\n" + text[end:]
        (folder / path.name).write_text(text)
    return folder


async def step_of(database_url: str, channel: str, address: str) -> str:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            rows = await session.exec(
                select(Conversation).where(
                    Conversation.channel == channel,
                    Conversation.address_index == blind_index(address),
                    Conversation.tenant == "jooptics",
                )
            )
            row = rows.first()
            return row.step if row else "start"
    finally:
        await engine.dispose()


async def rows(database_url: str, model: type) -> list[Any]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            return list(await session.exec(select(model)))
    finally:
        await engine.dispose()


async def drive(
    customer: Any,
    database_url: str,
    channel: str,
    address: str,
    mailbox: Any,
    kind: RequestType,
    email: str,
) -> list[str]:
    """Choose `kind` from the menu, then answer each step until the dialogue rests."""
    said = [await customer.say("hi")]
    menu = said[0]
    lines = [line for line in menu.splitlines() if re.match(r"^\d+\.", line.strip())]
    matching = [line for line in lines if _label_matches(line, kind)]
    assert len(matching) == 1, menu
    label_line = matching[0]
    number = label_line.strip().split(".")[0]
    said.append(await customer.say(number))
    for _ in range(8):
        step = await step_of(database_url, channel, address)
        if step == "ask_details":
            answer = (
                "1 2"
                if kind is RequestType.COOKIE_OPT_OUT
                else ("My address on file is wrong, it should be 12 Garden Road")
            )
        elif step == "ask_identity":  # cookies: whom to apply them to; Telegram skips it
            answer = email if channel == "whatsapp" else "skip"
        elif step == "confirm":
            answer = "yes"
        elif step == "ask_email":
            answer = email
        elif step == "ask_code":
            # The reply saying the code was sent can overtake the mail itself.
            await eventually(lambda: any(email in m.rcpt_tos for m in mailbox.messages))
            answer = _code_in(mailbox, email)
        else:
            return said
        said.append(await customer.say(answer))
    raise AssertionError(f"dialogue did not settle: {said}")


_LABELS = {
    RequestType.ACCESS: "see the personal data",
    RequestType.RECTIFICATION: "correct",
    RequestType.ERASURE: "delete",
    RequestType.PORTABILITY: "another company",
    RequestType.RESTRICTION: "limit",
    RequestType.OBJECTION: "object",
    RequestType.CONSENT_WITHDRAWAL: "consent",
    RequestType.MARKETING_OPT_OUT: "marketing",
    RequestType.COOKIE_OPT_OUT: "cookies",
    RequestType.COMPLAINT: "complain",
}


def _label_matches(line: str, kind: RequestType) -> bool:
    return _LABELS[kind] in line.lower()


@pytest.mark.parametrize("channel", ["whatsapp", "telegram"])
@pytest.mark.parametrize("kind", list(RequestType), ids=[k.value for k in RequestType])
async def test_every_request_type_on_both_channels(
    database_url: str, tmp_path: Path, channel: str, kind: RequestType
) -> None:
    folder = tenants_offering_everything(tmp_path)
    email = f"{kind.value.replace('_', '.')}@example.com"
    with smtp_server() as (mailbox, port):
        async with running_service(
            database_url, tenants_dir=folder, smtp_url=f"smtp://127.0.0.1:{port}"
        ) as svc:
            if channel == "whatsapp":
                customer: Any = WhatsAppCustomer(svc, "whatsapp:+962790000001", NUMBER)
                address = customer.number
            else:
                customer = TelegramCustomer(svc, 6100001)
                await customer.say("/start jooptics")
                address = str(customer.chat_id)
            said = await drive(customer, database_url, channel, address, mailbox, kind, email)
            tickets = await rows(database_url, Ticket)
            assert [t.kind for t in tickets] == [kind.value], said
            ticket = tickets[0]
            assert ticket.channel == channel
            if kind in (RequestType.MARKETING_OPT_OUT, RequestType.COOKIE_OPT_OUT):
                assert ticket.status == TicketStatus.RESOLVED
                categories = {s.category for s in await rows(database_url, Suppression)}
                expected = (
                    {"marketing"}
                    if kind is RequestType.MARKETING_OPT_OUT
                    else {"cookies:analytics", "cookies:advertising"}
                )
                assert categories == expected
                ledger = await rows(database_url, ConsentRecord)
                assert {(r.category, r.ticket_id) for r in ledger} == {
                    (category, ticket.id) for category in expected
                }
                given = (
                    email if kind is RequestType.COOKIE_OPT_OUT and channel == "whatsapp" else None
                )
                assert {r.identity for r in ledger} == {given}
            else:
                assert ticket.status == TicketStatus.OPEN, said
                assert ticket.due_at is not None
                # The message that files (or verifies) a request names its reference and due date.
                assert ticket.ref in said[-1], said[-1]
            needs_mail = kind in {
                RequestType.ACCESS,
                RequestType.PORTABILITY,
                RequestType.RECTIFICATION,
                RequestType.ERASURE,
                RequestType.RESTRICTION,
                RequestType.OBJECTION,
                RequestType.CONSENT_WITHDRAWAL,
            }
            assert bool(mailbox.messages) == needs_mail
            assert svc.twilio.violations == [] and svc.telegram.violations == []
