"""What a customer sends during an open request (an ID photo, a document) is downloaded with
the channel's own credentials, kept sealed with the ticket, shown to staff, and listed on the
admin page. Real twilio / python-telegram-bot clients against the loopback fakes."""

from __future__ import annotations

import asyncio
import re

from sqlmodel import select

from storage.db import create_engine, session_factory
from storage.desk_models import DeskFile
from storage.models import Ticket, TicketEvent
from tests.fakes.twilio_api import inbound_whatsapp_form
from tests.service import Service, eventually, running_service
from tests.test_intake import TelegramCustomer, WhatsAppCustomer

PHOTO = b"\xff\xd8\xff\xe0" + b"ID-CARD-PIXELS" * 200
PDF = b"%PDF-1.4 proof of address " * 50
STAFF_CHAT = -1000000000001
JOO_NUMBER = "whatsapp:+14155238882"  # JoOptics takes complaints
REF = re.compile(r"[A-Z]+-\d{4}-\d{5}")


async def _file_a_complaint(customer: WhatsAppCustomer | TelegramCustomer) -> str:
    answer = await customer.say("I want to make a complaint")
    for words in ("yes", "The shop shared my eye test with my employer", "yes"):
        if (found := REF.search(answer)) is not None:
            return found.group(0)
        answer = await customer.say(words)
    found = REF.search(answer)
    assert found, answer
    return found.group(0)


async def _kept(svc: Service, ref: str) -> tuple[list[DeskFile], list[dict]]:
    engine = create_engine(svc.settings.database_url)
    try:
        async with session_factory(engine)() as session:
            ticket = (await session.exec(select(Ticket).where(Ticket.ref == ref))).one()
            files = list(
                await session.exec(select(DeskFile).where(DeskFile.ticket_id == ticket.id))
            )
            events = list(
                await session.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id))
            )
        return files, [f for e in events for f in e.data.get("files", [])]
    finally:
        await engine.dispose()


def _open(svc: Service, stored: DeskFile) -> bytes:
    from bot.desk import Desk
    from bot.tenants import load_tenants

    desk = Desk(load_tenants(svc.settings.tenants_dir), svc.settings.secret())
    return desk.open_file(stored)


async def test_whatsapp_media_is_downloaded_with_twilio_credentials_and_kept(
    database_url: str,
) -> None:
    async with running_service(database_url) as svc:
        customer = WhatsAppCustomer(svc, to=JOO_NUMBER)
        ref = await _file_a_complaint(customer)
        photo = svc.twilio.add_media(PHOTO, "image/jpeg")
        gone = (  # a well-formed media URL Twilio no longer has (404)
            f"https://api.twilio.com/2010-04-01/Accounts/{svc.twilio.account_sid}"
            f"/Messages/MM{'0' * 32}/Media/ME{'0' * 32}"
        )
        before = len(customer.inbox())
        form = inbound_whatsapp_form(
            from_=customer.number, to=JOO_NUMBER, media=[(photo, "image/jpeg"), (gone, "image/png")]
        )
        assert (await svc.post_whatsapp(form)).status == 200
        await eventually(lambda: len(customer.inbox()) > before)
        files, recorded = await _wait_kept(svc, ref)
        assert len(files) == 1 and _open(svc, files[0]) == PHOTO
        assert PHOTO[:40] not in bytes(files[0].sealed)  # sealed, not stored in clear
        assert files[0].uploaded_by is None and files[0].content_type == "image/jpeg"
        kept = [f for f in recorded if f.get("kept")]
        lost = [f for f in recorded if f.get("kept") is False]
        assert [f["file"] for f in kept] == [files[0].id] and len(lost) == 1
        # Twilio was asked with the account's credentials (the fake refuses otherwise).
        fetched = [c for c in svc.twilio.calls if c.method == "GET" and "/Media/" in c.path]
        # (the fake records only the answered call: the 404 is in failed_calls)
        assert len(fetched) == 1
        # Staff received the photo itself, uploaded from our copy, not Twilio's URL.
        photos = await eventually(
            lambda: [c for c in svc.telegram.calls if c.method == "sendPhoto"]
        )
        uploaded = photos[0].params["photo"]  # an upload, not a URL or file id
        assert uploaded.data == PHOTO
        assert svc.twilio.violations == [] and svc.telegram.violations == []


async def _wait_kept(svc: Service, ref: str) -> tuple[list[DeskFile], list[dict]]:
    found: tuple[list[DeskFile], list[dict]] = ([], [])

    async def check() -> bool:
        nonlocal found
        found = await _kept(svc, ref)
        return bool(found[1])

    for _ in range(200):
        if await check():
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no file recorded for {ref}")


async def test_telegram_documents_are_downloaded_and_kept(database_url: str) -> None:
    async with running_service(database_url) as svc:
        customer = TelegramCustomer(svc, 5551234)
        await customer.say("/start jooptics")
        ref = await _file_a_complaint(customer)
        document = svc.telegram.add_file(PDF, file_name="proof.pdf", mime_type="application/pdf")
        before = len(customer.inbox())
        update = svc.telegram.message_update(customer.chat_id, None, document=document)
        assert (await svc.post_telegram(update)).status == 200
        await eventually(lambda: len(customer.inbox()) > before)
        files, recorded = await _wait_kept(svc, ref)
        assert len(files) == 1 and _open(svc, files[0]) == PDF
        assert files[0].name == "proof.pdf" and recorded[0]["kept"] is True
        assert svc.telegram.violations == []
