"""WhatsApp's 24-hour window: a message that cannot go as free text (sent later than 24 hours
after the customer last wrote, or refused by Twilio with 63016) is held, one approved template
invites the customer back, and their reply releases what was held before anything else."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bot import window
from bot.i18n import translate
from bot.reminders import tell_customer
from bot.tenants import Tenant, load_tenants
from storage.crypto import blind_index
from storage.db import SessionFactory, transaction
from storage.enums import OutboxStatus
from storage.models import Conversation, OutboundMessage, Requester, Ticket
from storage.tickets import create_ticket
from tests.conftest import TENANTS_DIR
from tests.fakes.twilio_api import inbound_whatsapp_form, whatsapp_status_form
from tests.service import eventually, running_service
from tests.test_desk import (
    SANA,
    Staff,
    WhatsApp,
    desk_tenants,
    file_whatsapp_access,
    from_bot,
    rows,
)
from tests.test_mail import smtp_server

OD_NUMBER = "whatsapp:+14155238881"
CUSTOMER = "whatsapp:+923005556677"
TEMPLATE = "HX" + "a1" * 16


def tenants_with_template(tmp_path: Path) -> Path:
    folder = tmp_path / "tenants"
    folder.mkdir()
    for path in TENANTS_DIR.glob("*.toml"):
        text = path.read_text()
        if path.stem == "optician-dynamics":
            text += f'\n[whatsapp_templates]\nupdate = "{TEMPLATE}"\n'
        (folder / path.name).write_text(text)
    return folder


async def test_refused_message_is_held_and_follows_the_customers_reply(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tenants_dir=tenants_with_template(tmp_path)) as svc:
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi"))
        first = await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER))
        menu = first[0].params["Body"]
        # Twilio later reports that the free-form message fell outside the window.
        refusal = whatsapp_status_form(
            message_sid=first[0].response["sid"],
            status="failed",
            from_=OD_NUMBER,
            to=CUSTOMER,
            error_code=63016,
        )
        assert (await svc.post_whatsapp(refusal, path="/webhooks/whatsapp/status")).status == 200
        await eventually(lambda: len(svc.twilio.sent_messages(to=CUSTOMER)) == 2)
        invite = svc.twilio.sent_messages(to=CUSTOMER)[1].params
        assert invite["ContentSid"] == TEMPLATE and "Body" not in invite
        assert json.loads(invite["ContentVariables"])["1"] == "Optician Dynamics"
        # The customer answers the invitation: the held menu comes first, then the answer.
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="menu"))
        await eventually(lambda: len(svc.twilio.sent_messages(to=CUSTOMER)) == 4)
        bodies = [c.params.get("Body") for c in svc.twilio.sent_messages(to=CUSTOMER)]
        assert bodies[2] == menu
        assert bodies[3] is not None and "reply with a number" in bodies[3].lower()


async def test_other_failures_are_not_held(database_url: str, tmp_path: Path) -> None:
    async with running_service(database_url, tenants_dir=tenants_with_template(tmp_path)) as svc:
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi"))
        first = await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER))
        refusal = whatsapp_status_form(
            message_sid=first[0].response["sid"],
            status="undelivered",
            from_=OD_NUMBER,
            to=CUSTOMER,
            error_code=63024,
        )
        assert (await svc.post_whatsapp(refusal, path="/webhooks/whatsapp/status")).status == 200
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="menu"))
        await eventually(lambda: len(svc.twilio.sent_messages(to=CUSTOMER)) == 2)
        assert all("ContentSid" not in c.params for c in svc.twilio.sent_messages(to=CUSTOMER))


# --- tell_customer outside the window, over a real database ----------------------------

T0 = datetime(2026, 3, 9, 10, 0, tzinfo=UTC)  # the customer's last message
DAY = timedelta(hours=24)


async def whatsapp_ticket(sessions: SessionFactory, tenant: Tenant) -> int:
    """A ticket of a WhatsApp customer who last wrote at T0; its id."""
    async with transaction(sessions) as session:
        requester = Requester(tenant=tenant.slug)
        session.add(requester)
        await session.flush()
        session.add(
            Conversation(
                channel="whatsapp",
                address=CUSTOMER,
                tenant=tenant.slug,
                requester_id=requester.id,
                language="ur",
                last_inbound_at=T0,
                written_to=OD_NUMBER,
            )
        )
        ticket = await create_ticket(
            session,
            tenant=tenant.slug,
            ref_prefix=tenant.ref_prefix,
            kind="access",
            channel="whatsapp",
            received_at=T0,
            language="ur",
            requester_id=requester.id,
            due_at=T0 + 9 * DAY,
            clock_started_at=T0,
        )
        assert ticket.id is not None
        return ticket.id


async def tell(
    sessions: SessionFactory, tenant: Tenant, ticket_id: int, text: str, at: datetime
) -> bool:
    async with transaction(sessions) as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        return await tell_customer(session, ticket, tenant, text, key=f"test:{text}", now=at)


async def outbox(sessions: SessionFactory) -> list[OutboundMessage]:
    async with sessions() as session:
        found = await session.exec(select(OutboundMessage).order_by(col(OutboundMessage.id)))
        return list(found)


def od_tenant(tmp_path: Path) -> Tenant:
    return load_tenants(tenants_with_template(tmp_path)).by_slug("optician-dynamics")


async def test_later_than_a_day_texts_are_held_behind_one_invitation_per_wait(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    tenant = od_tenant(tmp_path)
    ticket_id = await whatsapp_ticket(sessions, tenant)
    assert await tell(
        sessions, tenant, ticket_id, "inside the window", T0 + DAY - timedelta(seconds=1)
    )
    assert await tell(sessions, tenant, ticket_id, "first\nof two lines", T0 + DAY)
    assert await tell(sessions, tenant, ticket_id, "second", T0 + 2 * DAY)
    sent = await outbox(sessions)
    assert [(m.status, m.payload.get("text")) for m in sent] == [
        ("pending", "inside the window"),  # free text, as before
        ("held", "first\nof two lines"),
        ("pending", None),  # the invitation
        ("held", "second"),  # held too, and no second invitation
    ]
    invitation = sent[2]
    assert invitation.recipient == CUSTOMER and invitation.payload["from"] == OD_NUMBER
    assert invitation.payload["content_sid"] == TEMPLATE and "text" not in invitation.payload
    variables = json.loads(invitation.payload["content_variables"])
    assert variables == {"1": "Optician Dynamics", "2": translate("ur", window.INVITATION)}
    assert "\n" not in variables["2"]

    # Twilio refuses the message sent inside the window (its clock and ours differ by a
    # second): held after the others, still no second invitation.
    async with transaction(sessions) as session:
        first = await session.get(OutboundMessage, sent[0].id)
        assert first is not None
        first.status, first.provider_id = "sent", "SM" + "0" * 32
        session.add(first)
    refusal = whatsapp_status_form(
        message_sid="SM" + "0" * 32, status="failed", from_=OD_NUMBER, to=CUSTOMER, error_code=63016
    )
    async with transaction(sessions) as session:
        assert await window.hold_after_refusal(
            session, load_tenants(tmp_path / "tenants"), refusal, T0 + 2 * DAY
        )
    sent = await outbox(sessions)
    assert [m.payload.get("content_sid") for m in sent].count(TEMPLATE) == 1
    assert sent[-1].status == "held" and sent[-1].payload["text"] == "inside the window"

    # The customer writes: everything held goes, oldest first; a new wait gets a new invitation.
    async with transaction(sessions) as session:
        # A message to another business opens that business's window only.
        assert (
            await window.release_held(
                session, recipient=CUSTOMER, tenant="jooptics", now=T0 + 3 * DAY
            )
            == 0
        )
        assert (
            await window.release_held(
                session, recipient=CUSTOMER, tenant=tenant.slug, now=T0 + 3 * DAY
            )
            == 3
        )
        conversation = (await session.exec(select(Conversation))).one()
        conversation.last_inbound_at = T0 + 3 * DAY
        session.add(conversation)
    assert await tell(sessions, tenant, ticket_id, "third", T0 + 4 * DAY)
    sent = await outbox(sessions)
    assert [m.status for m in sent] == [
        "sent",
        "pending",
        "pending",
        "pending",
        "pending",
        "held",
        "pending",
    ]
    assert [m.payload.get("content_sid") for m in sent].count(TEMPLATE) == 2


async def test_without_a_template_nothing_is_queued_outside_the_window(
    sessions: SessionFactory,
) -> None:
    tenant = load_tenants(TENANTS_DIR).by_slug("optician-dynamics")  # ships without one
    assert window.UPDATE_TEMPLATE not in tenant.whatsapp_templates
    ticket_id = await whatsapp_ticket(sessions, tenant)
    assert not await tell(sessions, tenant, ticket_id, "late", T0 + DAY)
    assert await outbox(sessions) == []


# --- through the real service: a staff reply a day after the customer last wrote --------


class Clock:
    """The service's `now`: the real time, moved on by `ahead`."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


async def settled(database_url: str) -> None:
    """Wait until nothing to the customer is queued or in flight."""
    busy = [OutboxStatus.PENDING, OutboxStatus.SENDING]
    for _ in range(300):
        waiting = await rows(
            database_url,
            OutboundMessage,
            OutboundMessage.recipient_index == blind_index(CUSTOMER),
            col(OutboundMessage.status).in_(busy),
        )
        if not waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still queued to the customer: {waiting}")


async def test_a_staff_reply_a_day_later_waits_behind_the_template_for_the_customer(
    database_url: str, tmp_path: Path
) -> None:
    folder = desk_tenants(tmp_path)
    od = folder / "optician-dynamics.toml"
    od.write_text(od.read_text() + f'\n[whatsapp_templates]\nupdate = "{TEMPLATE}"\n')
    clock = Clock()
    with smtp_server() as (mailbox, port):
        async with running_service(
            database_url,
            now=clock,
            tenants_dir=folder,
            smtp_url=f"smtp://127.0.0.1:{port}",
            run_scheduler=False,  # nothing but the staff's replies goes to the customer
        ) as svc:
            ref = await file_whatsapp_access(svc, mailbox, WhatsApp(svc, CUSTOMER))
            filed = len(svc.twilio.sent_messages(to=CUSTOMER))

            def since_filed() -> list[dict[str, Any]]:
                return [c.params for c in svc.twilio.sent_messages(to=CUSTOMER)[filed:]]

            clock.ahead = DAY + timedelta(hours=1)
            sana = Staff(svc, SANA, "Sana")
            await sana.write(f"/reply {ref} Which branch did you visit?\nAnd in which month?")
            await sana.write(f"/reply {ref} A receipt would help too.")
            await eventually(
                lambda: [m for m in from_bot(svc) if "Held your message" in m.get("text", "")][1:]
            )
            # Staff are told it waits for the customer, not that it was sent.
            assert not [m for m in from_bot(svc) if "Sent your message" in m.get("text", "")]
            await settled(database_url)
            # Both replies are held; one template, and no free text, went to the customer.
            (invitation,) = await eventually(since_filed)
            assert invitation["ContentSid"] == TEMPLATE and "Body" not in invitation
            assert json.loads(invitation["ContentVariables"]) == {
                "1": "Optician Dynamics",
                "2": window.INVITATION,
            }
            held = await rows(database_url, OutboundMessage, OutboundMessage.status == window.HELD)
            assert [m.recipient for m in held] == [CUSTOMER, CUSTOMER]

            # The customer answers the invitation: the held replies arrive in order, as free
            # text, before the acknowledgement of the answer; each exactly once.
            answer = inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="Lahore, in March")
            assert (await svc.post_whatsapp(answer)).status == 200
            await eventually(lambda: len(since_filed()) >= 4)
            await settled(database_url)
            bodies = [m.get("Body") for m in since_filed()[1:]]
            assert bodies[0] == (
                f"Message from Optician Dynamics about your request {ref}:\n\n"
                "Which branch did you visit?\nAnd in which month?"
            )
            assert bodies[1] is not None and bodies[1].endswith("A receipt would help too.")
            assert bodies[2] is not None and bodies[2].startswith("Thank you. We have passed")
            assert all("ContentSid" not in m for m in since_filed()[1:])
            to_customer = await rows(
                database_url,
                OutboundMessage,
                OutboundMessage.recipient_index == blind_index(CUSTOMER),
            )
            assert {m.status for m in to_customer} == {"sent"}
            assert len(since_filed()) == 4
            assert svc.twilio.violations == []
