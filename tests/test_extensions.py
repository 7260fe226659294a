"""Extensions: a reason, the tenant's maximum from the original deadline, a history line with
who and why, the requester told the new date and the reason, and reminders that follow."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from bot.clock import parse_duration
from bot.extensions import ExtensionRefused, extend_ticket
from bot.reminders import ReminderPass
from bot.tenants import Tenant, Tenants
from storage import reminders as store
from storage import tickets
from storage.db import SessionFactory, transaction
from storage.enums import TicketStatus
from storage.models import Ticket
from tests.test_reminders import (
    OPEN_SINCE,
    STAFF_CHAT,
    THU,
    Clock,
    file_ticket,
    next_look,
    outbox_rows,
    policy,
    ticket_row,
    utc,
)

GDPR = policy(extensions={"max": "2 months", "notify_requester": True})
CCPA = policy(extensions={"max": "45 days", "notify_requester": True})
QUIET = policy(extensions={"max": "30 days", "notify_requester": False})
NONE = policy(extensions={"max": None})
CUSTOMER_CHAT = "5550042"
BEFORE_DUE = utc(2026, 3, 10, 9, 0)


async def _extend(
    sessions: SessionFactory,
    ticket_id: int,
    tenant: Tenant,
    *,
    reason: str = "the records are archived off site",
    by: str | None = None,
    now: datetime = BEFORE_DUE,
) -> datetime:
    async with transaction(sessions) as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        granted = await extend_ticket(
            session,
            ticket,
            tenant,
            reason=reason,
            actor="staff:21",
            now=now,
            by=parse_duration(by) if by else None,
        )
        return granted.new_due


async def _file(sessions: SessionFactory, tenant: Tenant, language: str = "en") -> int:
    return await file_ticket(
        sessions,
        tenant,
        received=OPEN_SINCE,
        due_at=THU,
        address=CUSTOMER_CHAT,
        language=language,
    )


async def test_an_extension_is_recorded_and_the_requester_told(sessions: SessionFactory) -> None:
    ticket_id = await _file(sessions, GDPR, language="ar")
    new_due = await _extend(sessions, ticket_id, GDPR, reason="  the records are   archived ")
    # "2 months" more from Thursday 12 March 2026 23:59:59 PKT: Tuesday 12 May 2026.
    assert new_due == utc(2026, 5, 12, 18, 59, 59)
    assert (await ticket_row(sessions, ticket_id)).due_at == new_due
    async with sessions() as session:
        event = (await tickets.events_of(session, ticket_id))[-1]
    assert (event.kind, event.actor, event.at) == ("extended", "staff:21", BEFORE_DUE)
    assert event.data == {
        "reason": "the records are archived",
        "from": THU.isoformat(),
        "due_at": new_due.isoformat(),
        "original_due_at": THU.isoformat(),
        "by": "max",
        "max": "2 months",
        "requester_notified": True,
    }
    (notice,) = await outbox_rows(sessions)
    assert notice.channel == "telegram" and notice.recipient == CUSTOMER_CHAT
    text = notice.payload["text"]
    assert "TD-2026-00001" in text and "12 مايو 2026" in text and "the records are archived" in text
    assert text.startswith("نحتاج إلى مزيد من الوقت")


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
async def test_an_extension_needs_a_reason(sessions: SessionFactory, reason: str) -> None:
    ticket_id = await _file(sessions, GDPR)
    with pytest.raises(ExtensionRefused, match="needs a reason"):
        await _extend(sessions, ticket_id, GDPR, reason=reason)
    assert (await ticket_row(sessions, ticket_id)).due_at == THU
    assert await outbox_rows(sessions) == []


async def test_a_policy_without_max_allows_no_extension(sessions: SessionFactory) -> None:
    ticket_id = await _file(sessions, NONE)
    with pytest.raises(ExtensionRefused, match="allows no extension"):
        await _extend(sessions, ticket_id, NONE)


async def test_the_maximum_counts_from_the_original_deadline(sessions: SessionFactory) -> None:
    ticket_id = await _file(sessions, CCPA)
    with pytest.raises(ExtensionRefused, match="after the latest deadline allowed"):
        await _extend(sessions, ticket_id, CCPA, by="46 days")
    # 30 days, then 15 more: 45 in all, the CCPA's limit (45 days after 12 March: 26 April).
    first = await _extend(sessions, ticket_id, CCPA, by="30 days")
    assert first == utc(2026, 4, 11, 18, 59, 59)
    with pytest.raises(ExtensionRefused, match="after the latest deadline allowed"):
        await _extend(sessions, ticket_id, CCPA, by="16 days")
    second = await _extend(sessions, ticket_id, CCPA, reason="still waiting for the archive")
    assert second == utc(2026, 4, 26, 18, 59, 59)
    with pytest.raises(ExtensionRefused, match="already extended as far as 45 days"):
        await _extend(sessions, ticket_id, CCPA)
    async with sessions() as session:
        history = [e for e in await tickets.events_of(session, ticket_id) if e.kind == "extended"]
    assert [e.data["original_due_at"] for e in history] == [THU.isoformat()] * 2
    assert len(await outbox_rows(sessions)) == 2


async def test_no_extension_after_the_deadline_or_on_a_closed_ticket(
    sessions: SessionFactory,
) -> None:
    ticket_id = await _file(sessions, GDPR)
    with pytest.raises(ExtensionRefused, match="has passed"):
        await _extend(sessions, ticket_id, GDPR, now=THU + timedelta(seconds=1))
    async with transaction(sessions) as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        ticket.status = TicketStatus.RESOLVED
    with pytest.raises(ExtensionRefused, match="already resolved"):
        await _extend(sessions, ticket_id, GDPR)


async def test_the_requester_is_not_told_when_the_policy_says_so(sessions: SessionFactory) -> None:
    ticket_id = await _file(sessions, QUIET)
    await _extend(sessions, ticket_id, QUIET)
    assert await outbox_rows(sessions) == []
    async with sessions() as session:
        event = (await tickets.events_of(session, ticket_id))[-1]
    assert event.data["requester_notified"] is False


async def test_reminders_follow_the_new_deadline_at_once(sessions: SessionFactory) -> None:
    """Reminders of the old deadline are never sent; the new one's are planned at once."""
    ticket_id = await _file(sessions, GDPR)
    clock = Clock(BEFORE_DUE)
    job = ReminderPass(sessions, Tenants([GDPR]), now=clock)
    await job.run()  # Tuesday: the 3-business-day reminder (Monday night) went out, late
    assert await next_look(sessions, ticket_id) == utc(2026, 3, 11, 18, 59, 59)
    new_due = await _extend(sessions, ticket_id, GDPR, by="7 days")  # Thursday 19 March
    assert await next_look(sessions, ticket_id) is None
    await job.run()  # planned at once: next is 3 business days before the new deadline
    # Thu 19 March 23:59:59 PKT back 3 business days: Wed 18, Tue 17, Mon 16.
    assert await next_look(sessions, ticket_id) == utc(2026, 3, 16, 18, 59, 59)
    for clock.at in (
        utc(2026, 3, 11, 19, 0),  # the old deadline's 1-business-day reminder: gone
        THU + timedelta(seconds=1),  # the old deadline: no escalation
        utc(2026, 3, 16, 19, 0),
    ):
        await job.run()
    async with sessions() as session:
        sent = await store.sent_for(session, ticket_id)
    assert [(r.anchor_at, r.slot) for r in sent] == [
        (THU, "3 business days"),
        (new_due, "3 business days"),
    ]
    staff = [r for r in await outbox_rows(sessions) if r.recipient == str(STAFF_CHAT)]
    assert len(staff) == 2 and "2026-03-19 23:59 PKT" in staff[1].payload["text"]
