"""Retention on both databases: personal data leaves closed tickets when the tenant's period
runs out, evidence records are deleted after theirs, and idle conversations and old message
bodies are cleared. The shipped tenants: Optician Dynamics keeps personal data 90 days after
a ticket closes; JoOptics and Optimizory keep the evidence record 24 months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import col, select

from bot import retention
from bot.tenants import load_tenants
from storage import history, outbox, people, tickets
from storage.db import SessionFactory, transaction
from storage.enums import TicketStatus
from storage.models import (
    ContactIdentity,
    Conversation,
    InboundMessage,
    OutboundMessage,
    ReminderSent,
    Suppression,
    Ticket,
    TicketEvent,
    VerificationCode,
)
from tests.conftest import TENANTS_DIR
from tests.test_cli import rightsdesk

TENANTS = load_tenants(TENANTS_DIR)
CLOSED = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
EMAIL = "bilal@example.com"
PHONE = "whatsapp:+923001234567"


async def _closed_ticket(
    sessions: SessionFactory,
    tenant: str,
    prefix: str,
    *,
    status: TicketStatus = TicketStatus.RESOLVED,
    closed: datetime | None = CLOSED,
    phone: str = PHONE,
) -> str:
    opened = CLOSED - timedelta(days=5)
    async with transaction(sessions) as session:
        requester = await people.requester_for(
            session, tenant=tenant, kind="whatsapp", value=phone, now=opened
        )
        await people.prove_identity(
            session, requester_id=requester.id, tenant=tenant, kind="email", value=EMAIL, now=opened
        )
        ticket = await tickets.create_ticket(
            session,
            tenant=tenant,
            ref_prefix=prefix,
            kind="rectification",
            channel="whatsapp",
            received_at=opened,
            requester_id=requester.id,
            details="my address is 12 Mall Road, Lahore",
        )
        assert ticket.id is not None
        await tickets.add_event(
            session,
            ticket,
            actor="customer",
            kind="customer_message",
            at=opened + timedelta(hours=1),
            data={"text": "the old address was 3 Canal View"},
        )
        await tickets.add_event(
            session,
            ticket,
            actor="staff:111",
            kind="extended",
            at=opened + timedelta(days=1),
            data={"reason": "the archive is offline"},
        )
        session.add(
            VerificationCode(
                ticket_id=ticket.id,
                email=EMAIL,
                code_hash="x",
                created_at=opened,
                expires_at=opened + timedelta(minutes=10),
                last_sent_at=opened,
            )
        )
        session.add(
            ReminderSent(
                ticket_id=ticket.id,
                kind="before",
                anchor_at=opened,
                slot="1",
                due_at=opened,
                sent_at=opened,
                late=False,
            )
        )
        sent = outbox.enqueue(
            session,
            channel="whatsapp",
            recipient=phone,
            tenant=tenant,
            ticket_id=ticket.id,
            payload={"text": "We have corrected your address to 12 Mall Road"},
        )
        sent.status = "sent"
        if status is not None and closed is not None:
            ticket.status = status
            ticket.closed_at = closed
            await tickets.add_event(session, ticket, actor="staff:111", kind=str(status), at=closed)
        session.add(ticket)
        return ticket.ref


async def _purge(sessions: SessionFactory, now: datetime, *, dry_run: bool = False):
    return await retention.purge(sessions, TENANTS, now=now, dry_run=dry_run)


async def _ticket(sessions: SessionFactory, ref: str) -> Ticket | None:
    async with sessions() as session:
        return await tickets.by_ref(session, ref)


async def test_personal_data_leaves_a_closed_ticket_after_the_tenant_period(
    sessions: SessionFactory,
) -> None:
    ref = await _closed_ticket(sessions, "optician-dynamics", "OD")
    still_open = await _closed_ticket(
        sessions, "optician-dynamics", "OD", closed=None, phone="whatsapp:+923007654321"
    )
    # 90 days after 10 January: the period ends on 10 April, 23:59:59 in Karachi.
    early = await _purge(sessions, datetime(2026, 4, 10, 18, 0, tzinfo=UTC))
    assert early.redacted == {} and early.deleted == {}
    due = datetime(2026, 4, 10, 19, 0, 1, tzinfo=UTC)
    preview = await _purge(sessions, due, dry_run=True)
    assert preview.redacted == {"optician-dynamics": [ref]}
    assert (await _ticket(sessions, ref)).details is not None  # type: ignore[union-attr]

    done = await _purge(sessions, due)
    assert done.redacted == {"optician-dynamics": [ref]}
    ticket = await _ticket(sessions, ref)
    assert ticket is not None and ticket.details is None
    assert ticket.status == TicketStatus.RESOLVED and ticket.closed_at == CLOSED  # evidence
    async with sessions() as session:
        assert ticket.id is not None
        events = await tickets.events_of(session, ticket.id)
        kinds = [e.kind for e in events]
        assert kinds[-1] == retention.MARK
        texts = str([e.data for e in events])
        assert "Canal View" not in texts and "Mall Road" not in texts
        assert {"reason": "the archive is offline"} in [e.data for e in events]  # evidence
        codes = list(await session.exec(select(VerificationCode)))
        assert [c.ticket_id for c in codes] != [] and all(c.ticket_id != ticket.id for c in codes)
        messages = list(
            await session.exec(
                select(OutboundMessage).where(OutboundMessage.ticket_id == ticket.id)
            )
        )
        assert [m.payload for m in messages] == [{}]
        identities = list(await session.exec(select(ContactIdentity)))
        assert PHONE not in [i.value for i in identities]  # the closed ticket's requester
        assert "whatsapp:+923007654321" in [i.value for i in identities]  # the open one's
        _checked, problems = await history.verify(session)
        assert problems == []
    # The open ticket is untouched, and a second pass finds nothing more.
    assert (await _ticket(sessions, still_open)).details is not None  # type: ignore[union-attr]
    again = await _purge(sessions, due + timedelta(days=1))
    assert again.redacted == {} and again.deleted == {}


async def test_evidence_records_go_after_24_months(sessions: SessionFactory) -> None:
    rejected = await _closed_ticket(sessions, "jooptics", "JOO", status=TicketStatus.REJECTED)
    later = await _closed_ticket(
        sessions, "optimizory", "OPT", closed=CLOSED + timedelta(days=40), phone="whatsapp:+911"
    )
    async with transaction(sessions) as session:
        await people.record_consent(
            session,
            tenant="jooptics",
            requester_id=None,
            channel="whatsapp",
            address=PHONE,
            category="marketing",
            granted=False,
            words="STOP",
            ticket_id=None,
            now=CLOSED,
        )
    not_yet = await _purge(sessions, datetime(2028, 1, 9, tzinfo=UTC))
    assert not_yet.deleted == {}
    done = await _purge(sessions, datetime(2028, 1, 12, tzinfo=UTC))
    assert done.deleted == {"jooptics": [rejected]}
    assert await _ticket(sessions, rejected) is None
    assert await _ticket(sessions, later) is not None
    async with sessions() as session:
        tables = (TicketEvent, VerificationCode, ReminderSent)
        remaining = {t.__name__: list(await session.exec(select(t))) for t in tables}
        ticket_ids = {row.ticket_id for rows in remaining.values() for row in rows}
        later_ticket = await tickets.by_ref(session, later)
        assert later_ticket is not None and ticket_ids == {later_ticket.id}
        # The message rows stay for the outbox's own bookkeeping, unlinked from the ticket.
        linked = list(await session.exec(select(OutboundMessage.ticket_id)))
        assert sorted(linked, key=str) == sorted([later_ticket.id, None], key=str)
        # An opt-out is never forgotten.
        assert len(list(await session.exec(select(Suppression)))) == 1


async def test_idle_conversations_and_old_message_bodies_are_cleared(
    sessions: SessionFactory,
) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    async with transaction(sessions) as session:
        for n, idle in enumerate((timedelta(days=31), timedelta(days=2))):
            session.add(
                Conversation(
                    channel="whatsapp",
                    address=f"whatsapp:+92300000000{n}",
                    tenant="optician-dynamics",
                    step="awaiting_email",
                    state={"email": "half-typed@example.com"},
                    updated_at=now - idle,
                )
            )
            session.add(
                InboundMessage(
                    channel="whatsapp",
                    provider_id=f"SM{n}",
                    payload={"Body": "delete my data"},
                    received_at=now - idle,
                    processed_at=now - idle,
                )
            )
        pending = InboundMessage(
            channel="whatsapp", provider_id="SMpending", received_at=now - timedelta(days=40)
        )
        session.add(pending)
    report = await _purge(sessions, now)
    assert (report.conversations, report.inbound) == (1, 1)
    async with sessions() as session:
        steps = list(await session.exec(select(Conversation.address)))
        assert steps == ["whatsapp:+923000000001"]
        kept = list(
            await session.exec(select(InboundMessage.provider_id).order_by(col(InboundMessage.id)))
        )
        assert kept == ["SM1", "SMpending"]  # never processed: kept until it is


def test_purge_command_dry_run(tmp_path: Path, database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    assert rightsdesk("migrate", cwd=tmp_path, env=env).returncode == 0
    result = rightsdesk("purge", "--dry-run", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "would be cleared" in result.stdout
