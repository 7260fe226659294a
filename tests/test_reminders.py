"""Reminders derived from tickets: the pure plan (a table), and passes over a real database
with an injected clock: sent once, planned ahead, late after downtime, never for the
closed or the superseded, and two schedulers on one PostgreSQL database over 1,000 tickets."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot import window
from bot.clock import add_duration, parse_duration
from bot.i18n import translate
from bot.reminders import (
    DIGEST_LINES,
    LATE_AFTER,
    RETRY_AFTER,
    Due,
    Facts,
    PassReport,
    ReminderKind,
    ReminderPass,
    _Route,
    _route,
    before,
    calendar_of,
    deadline_plan,
    describe,
    latest_occurrence,
    occurrence,
    plan,
    plan_group,
    policy_fingerprint,
    shortest,
)
from bot.scheduler import Clock as Scheduler
from bot.tenants import Tenant, Tenants
from storage import reminders as store
from storage import tickets
from storage.db import (
    SessionFactory,
    alembic_config,
    create_engine,
    migrate,
    session_factory,
    transaction,
)
from storage.enums import CLOSED_STATUSES, TicketStatus
from storage.history import Summary, summarize
from storage.models import (
    ClockPolicy,
    Conversation,
    OutboundMessage,
    ReminderSent,
    Requester,
    Ticket,
    TicketClock,
)
from storage.reminders import ToPlan
from storage.tickets import events_of
from storage.types import UTCDateTime
from tests import conftest
from tests.conftest import need

STAFF_CHAT = -1001
ADMINS = [11, 12]
ASSIGNEE = 21


def policy(**changes: Any) -> Tenant:
    """A test tenant in Pakistan; `changes` replace top-level keys or merge into tables."""
    data: dict[str, Any] = {
        "slug": "test-desk",
        "name": "Test Desk",
        "ref_prefix": "TD",
        "timezone": "Asia/Karachi",
        "calendar": "PK",
        "languages": ["en", "ur", "ar"],
        "privacy_email": "privacy@test-desk.example",
        "clock_starts": "received",
        "unverified_expire_after": "5 business days",
        "channels": {
            "whatsapp_numbers": ["+14155230001"],
            "telegram_start": "test-desk",
            "staff_chat_id": STAFF_CHAT,
            "staff_user_ids": [*ADMINS, ASSIGNEE],
            "admin_user_ids": ADMINS,
        },
        "requests": {"access": "7 business days", "erasure": "100 seconds"},
        "reminders": {
            "before": ["3 business days", "1 business day", "4 hours"],
            "overdue_every": "1 day",
        },
        "extensions": {"max": "2 months", "notify_requester": True},
    }
    data = copy.deepcopy(data)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return Tenant.model_validate(data)


PK = policy()
SA = policy(timezone="Asia/Riyadh", calendar="SA")
SECONDS = policy(reminders={"before": ["85 seconds"], "overdue_every": "30 seconds"})
PAUSING = policy(pause_while_awaiting_requester=True)
SHORT_EXPIRY = policy(unverified_expire_after="12 hours")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# Thursday 12 March 2026 ends at 23:59:59 PKT (UTC+5) = 18:59:59 UTC: an ordinary week in
# Pakistan (Sat-Sun weekend; Eid al-Fitr is 20-21 March, Pakistan Day 23 March).
THU = utc(2026, 3, 12, 18, 59, 59)
OPEN_SINCE = utc(2026, 3, 2, 4, 0)  # clock started Monday 2 March, 09:00 PKT


def facts(
    status: TicketStatus = TicketStatus.OPEN,
    due: datetime | None = THU,
    set_at: datetime = OPEN_SINCE,
    since: datetime = OPEN_SINCE,
) -> Facts:
    return Facts(status=status, due_at=due, deadline_set_at=set_at, status_since=since)


def due(kind: ReminderKind, anchor: datetime, slot: str, at: datetime, late: bool = False) -> Due:
    return Due(kind, anchor, slot, at, late)


B, OV = ReminderKind.BEFORE, ReminderKind.OVERDUE
VN, RN, EX = ReminderKind.VERIFY_NUDGE, ReminderKind.REQUESTER_NUDGE, ReminderKind.EXPIRE
SA_SUN = utc(2026, 3, 15, 20, 59, 59)  # Sunday 15 March 2026, 23:59:59 AST (UTC+3)
SA_AFTER_EID = utc(2026, 3, 25, 20, 59, 59)  # Wednesday 25 March 2026, 23:59:59 AST
PK_AFTER_EID = utc(2026, 3, 24, 18, 59, 59)  # Tuesday 24 March 2026, 23:59:59 PKT
T0 = utc(2026, 6, 1, 9, 0, 0)  # the 100-second ticket starts here, due T0 + 100 s
SECS = T0 + timedelta(seconds=100)
WAIT = utc(2026, 3, 9, 5, 0)  # Monday 9 March 10:00 PKT: began to wait for the customer

PLAN_CASES: list[tuple[str, Tenant, Facts, datetime, list[Due], datetime | None]] = [
    # (name, tenant, facts, now, due now, next look)
    (
        # 3 business days before Thu 12 23:59:59 is Mon 9 23:59:59 PKT = 18:59:59Z.
        "nothing yet: next is the 3-business-day reminder on Monday night",
        PK, facts(), utc(2026, 3, 9, 7, 0), [], utc(2026, 3, 9, 18, 59, 59),
    ),
    (
        "3 business days before, on time; next: 1 business day before (Wed 11 23:59:59 PKT)",
        PK, facts(), utc(2026, 3, 9, 19, 0, 30),
        [due(B, THU, "3 business days", utc(2026, 3, 9, 18, 59, 59))],
        utc(2026, 3, 11, 18, 59, 59),
    ),
    (
        "1 business day before supersedes 3; next: 4 hours before (Thu 19:59:59 PKT)",
        PK, facts(), utc(2026, 3, 11, 19, 0, 0),
        [due(B, THU, "1 business day", utc(2026, 3, 11, 18, 59, 59))],
        utc(2026, 3, 12, 14, 59, 59),
    ),
    (
        "down since Monday: only the latest missed reminder, marked late",
        PK, facts(), utc(2026, 3, 12, 10, 0),
        [due(B, THU, "1 business day", utc(2026, 3, 11, 18, 59, 59), late=True)],
        utc(2026, 3, 12, 14, 59, 59),
    ),
    (
        "4 hours before, found 31 minutes late; next: the deadline itself",
        PK, facts(), utc(2026, 3, 12, 15, 31),
        [due(B, THU, "4 hours", utc(2026, 3, 12, 14, 59, 59), late=True)],
        THU,
    ),
    (
        "at the deadline: escalation 0; next one a day later at the same local time",
        PK, facts(), THU, [due(OV, THU, "0", THU)], utc(2026, 3, 13, 18, 59, 59),
    ),
    (
        "two days and three hours overdue: escalation 2 only, late",
        PK, facts(), THU + timedelta(days=2, hours=3),
        [due(OV, THU, "2", THU + timedelta(days=2), late=True)],
        THU + timedelta(days=3),
    ),
    (
        "closed: nothing, ever",
        PK, facts(TicketStatus.RESOLVED), THU + timedelta(days=2), [], None,
    ),
    (
        # An extension made on Wednesday 11 at 17:00 PKT: Monday's reminder was for the old
        # deadline's world and does not apply; the 1-business-day one is still ahead.
        "deadline set on Wednesday: reminders timed before that do not apply",
        PK, facts(set_at=utc(2026, 3, 11, 12, 0)), utc(2026, 3, 11, 12, 0, 1),
        [], utc(2026, 3, 11, 18, 59, 59),
    ),
    (
        # Saudi weekend is Fri-Sat: 1 business day before Sunday 15 is Thursday 12.
        "Saudi Arabia: 1 business day before a Sunday deadline is the Thursday",
        SA, facts(due=SA_SUN), utc(2026, 3, 12, 21, 0),
        [due(B, SA_SUN, "1 business day", utc(2026, 3, 12, 20, 59, 59))],
        utc(2026, 3, 15, 16, 59, 59),
    ),
    (
        # Eid al-Fitr holidays 19-24 March 2026 (observed): 1 business day before Wed 25
        # is Wed 18, 3 business days before is Mon 16 (Fri 13/Sat 14 weekend, Sun 15 works).
        "Saudi Arabia across Eid: 1 business day before Wed 25 March is Wed 18 March",
        SA, facts(due=SA_AFTER_EID), utc(2026, 3, 18, 21, 0),
        [due(B, SA_AFTER_EID, "1 business day", utc(2026, 3, 18, 20, 59, 59))],
        utc(2026, 3, 25, 16, 59, 59),
    ),
    (
        # Pakistan: Mon 23 Pakistan Day, Sat-Sun 21-22 weekend, Fri 20 Eid: the business
        # day before Tue 24 is Thu 19.
        "Pakistan across Eid and Pakistan Day: 1 business day before Tue 24 is Thu 19",
        PK, facts(due=PK_AFTER_EID), utc(2026, 3, 19, 19, 0),
        [due(B, PK_AFTER_EID, "1 business day", utc(2026, 3, 19, 18, 59, 59))],
        utc(2026, 3, 24, 14, 59, 59),
    ),
    (
        "100-second ticket: the 85-second reminder at T0 + 15 s",
        SECONDS, facts(due=SECS, set_at=T0, since=T0), T0 + timedelta(seconds=15),
        [due(B, SECS, "85 seconds", T0 + timedelta(seconds=15))], SECS,
    ),
    (
        "100-second ticket: escalation 1 at T0 + 130 s, next at T0 + 160 s",
        SECONDS, facts(due=SECS, set_at=T0, since=T0), T0 + timedelta(seconds=131),
        [due(OV, SECS, "1", T0 + timedelta(seconds=130))], T0 + timedelta(seconds=160),
    ),
    (
        "unverified for 23 hours: one nudge; next: expiry after 5 business days",
        PK, facts(TicketStatus.AWAITING_VERIFICATION, due=None, since=WAIT),
        WAIT + timedelta(hours=23, minutes=1),
        [due(VN, WAIT, "", WAIT + timedelta(hours=23))],
        # 5 business days after Monday 9 March: Monday 16 March 23:59:59 PKT.
        utc(2026, 3, 16, 18, 59, 59),
    ),
    (
        "unverified: no nudge once WhatsApp's 24-hour window has closed",
        PK, facts(TicketStatus.AWAITING_VERIFICATION, due=None, since=WAIT),
        WAIT + timedelta(hours=25), [], utc(2026, 3, 16, 18, 59, 59),
    ),
    (
        "unverified past unverified_expire_after: expire",
        PK, facts(TicketStatus.AWAITING_VERIFICATION, due=None, since=WAIT),
        utc(2026, 3, 16, 19, 0), [due(EX, WAIT, "", utc(2026, 3, 16, 18, 59, 59), late=False)],
        None,
    ),
    (
        "expiry before the nudge would come: no nudge is planned",
        SHORT_EXPIRY, facts(TicketStatus.AWAITING_VERIFICATION, due=None, since=WAIT),
        WAIT + timedelta(hours=1), [], WAIT + timedelta(hours=12),
    ),
    (
        # The clock runs from receipt while verification waits: reminders continue.
        "unverified with a running clock: deadline reminders and the nudge plan together",
        PK, facts(TicketStatus.AWAITING_VERIFICATION, since=WAIT), utc(2026, 3, 9, 12, 0),
        [], utc(2026, 3, 9, 18, 59, 59),
    ),
    (
        "awaiting the requester: one nudge after 23 hours, deadline reminders go on",
        PK, facts(TicketStatus.AWAITING_REQUESTER, since=utc(2026, 3, 10, 10, 0)),
        utc(2026, 3, 11, 9, 30),
        [due(RN, utc(2026, 3, 10, 10, 0), "", utc(2026, 3, 11, 9, 0)),
         due(B, THU, "3 business days", utc(2026, 3, 9, 18, 59, 59), late=True)],
        utc(2026, 3, 11, 18, 59, 59),
    ),
    (
        "clock stopped while awaiting the requester: the nudge only, then nothing",
        PAUSING, facts(TicketStatus.AWAITING_REQUESTER, since=utc(2026, 3, 10, 10, 0)),
        utc(2026, 3, 11, 9, 30),
        [due(RN, utc(2026, 3, 10, 10, 0), "", utc(2026, 3, 11, 9, 0))], None,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tenant", "ticket", "now", "expected", "next_at"),
    [case[1:] for case in PLAN_CASES],
    ids=[case[0] for case in PLAN_CASES],
)
def test_plan(
    tenant: Tenant, ticket: Facts, now: datetime, expected: list[Due], next_at: datetime | None
) -> None:
    result = plan(ticket, tenant, now)
    assert list(result.due) == expected
    assert result.next_at == next_at
    assert result.next_at is None or result.next_at > now


@pytest.mark.parametrize(
    ("country", "zone", "deadline", "offset", "expected"),
    [
        # Tue 10 March 23:59:59 PKT, 3 business days back: Mon 9, Fri 6, Thu 5.
        ("PK", "Asia/Karachi", utc(2026, 3, 10, 18, 59, 59), "3 business days",
         utc(2026, 3, 5, 18, 59, 59)),
        # "7 days" before Thu 12 March: Thu 5 March, same local time.
        ("PK", "Asia/Karachi", THU, "7 days", utc(2026, 3, 5, 18, 59, 59)),
        # "1 month" before 12 March: 12 February.
        ("PK", "Asia/Karachi", THU, "1 month", utc(2026, 2, 12, 18, 59, 59)),
        # 31 March 2026 23:59:59 BST (UTC+1), 1 month back: 28 Feb 23:59:59 GMT (UTC+0).
        ("GB", "Europe/London", utc(2026, 3, 31, 22, 59, 59), "1 month",
         utc(2026, 2, 28, 23, 59, 59)),
        # US: Monday 6 July 2026 (the day after Independence Day observed on Fri 3 July);
        # 1 business day back skips Sun 5, Sat 4 and Fri 3: Thursday 2 July, EDT (UTC-4).
        ("US", "America/New_York", utc(2026, 7, 7, 3, 59, 59), "1 business day",
         utc(2026, 7, 3, 3, 59, 59)),
    ],
)  # fmt: skip
def test_reminder_offsets_on_local_calendars(
    country: str, zone: str, deadline: datetime, offset: str, expected: datetime
) -> None:
    assert before(deadline, parse_duration(offset), calendar_of(country, zone)) == expected


@pytest.mark.parametrize(
    ("every", "elapsed", "k"),
    [
        ("30 seconds", timedelta(seconds=29), 0),
        ("30 seconds", timedelta(seconds=30), 1),
        ("1 day", timedelta(days=3, seconds=-1), 2),
        ("1 day", timedelta(days=40), 40),
        # From Thu 12 March: Fri 13, Mon 16, Tue 17, Wed 18, Thu 19 (Fri 20 Eid, Mon 23
        # Pakistan Day): escalation 5 on Thu 19, the next on Tue 24.
        ("1 business day", timedelta(days=11), 5),
        ("1 month", timedelta(days=365), 12),
    ],
)
def test_latest_escalation(every: str, elapsed: timedelta, k: int) -> None:
    calendar = calendar_of("PK", "Asia/Karachi")
    interval = parse_duration(every)
    now = THU + elapsed
    assert latest_occurrence(THU, interval, now, calendar) == k
    assert (
        occurrence(THU, interval, k, calendar) <= now < occurrence(THU, interval, k + 1, calendar)
    )


def test_describe_time_left() -> None:
    assert describe(timedelta(seconds=85)) == "1 minute 25 seconds"
    assert describe(timedelta(days=2, hours=4, minutes=3)) == "2 days 4 hours"
    assert describe(timedelta(hours=-3)) == "3 hours"
    assert describe(timedelta(0)) == "0 seconds"
    assert describe(timedelta(days=3, seconds=-1)) == "3 days"


# --- passes over a database -----------------------------------------------------------


class Clock:
    """A controllable `now`."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


async def file_ticket(
    sessions: SessionFactory,
    tenant: Tenant,
    *,
    received: datetime,
    due_at: datetime | None,
    kind: str = "access",
    status: TicketStatus = TicketStatus.OPEN,
    channel: str = "telegram",
    address: str | None = None,
    language: str = "en",
    last_inbound: datetime | None = None,
    written_to: str | None = None,
) -> int:
    """A ticket (with its requester's conversation when `address` is given); its id."""
    async with transaction(sessions) as session:
        requester_id = None
        if address is not None:
            requester = Requester(tenant=tenant.slug, language=language)
            session.add(requester)
            await session.flush()
            requester_id = requester.id
            session.add(
                Conversation(
                    channel=channel,
                    address=address,
                    tenant=tenant.slug,
                    requester_id=requester_id,
                    last_inbound_at=last_inbound or received,
                    written_to=written_to,
                )
            )
        ticket = await tickets.create_ticket(
            session,
            tenant=tenant.slug,
            ref_prefix=tenant.ref_prefix,
            kind=kind,
            channel=channel,
            received_at=received,
            status=status,
            language=language,
            requester_id=requester_id,
            due_at=due_at,
            clock_started_at=received if due_at is not None else None,
        )
        assert ticket.id is not None
        return ticket.id


async def outbox_rows(sessions: SessionFactory) -> list[OutboundMessage]:
    async with sessions() as session:
        return list(await session.exec(select(OutboundMessage).order_by(col(OutboundMessage.id))))


async def next_look(sessions: SessionFactory, ticket_id: int) -> datetime | None:
    """When the clock will look at the ticket again (None: at the next pass; NEVER: never,
    which a closed ticket says by having no clock row at all)."""
    async with sessions() as session:
        found = await session.get(TicketClock, ticket_id)
        if found is not None:
            return found.next_at
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None and ticket.status in CLOSED_STATUSES, "open, yet no clock row"
        return store.NEVER


async def ticket_row(sessions: SessionFactory, ticket_id: int) -> Ticket:
    async with sessions() as session:
        found = await session.get(Ticket, ticket_id)
        assert found is not None
        return found


async def test_a_reminder_goes_out_once_and_the_next_look_is_planned(
    sessions: SessionFactory,
) -> None:
    clock = Clock(OPEN_SINCE)
    ticket_id = await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU)
    job = ReminderPass(sessions, Tenants([PK]), now=clock)

    report = await job.run()  # plans the new ticket: nothing due yet
    assert (report.looked_at, report.sent) == (1, 0)
    assert await next_look(sessions, ticket_id) == utc(2026, 3, 9, 18, 59, 59)
    assert (await job.run()).looked_at == 0  # nothing to look at until then

    clock.at = utc(2026, 3, 9, 19, 0)
    assert (await job.run()).sent == 1
    clock.at = utc(2026, 3, 9, 19, 5)
    assert (await job.run()).looked_at == 0
    (message,) = await outbox_rows(sessions)
    assert message.channel == "telegram" and message.recipient == str(STAFF_CHAT)
    text = message.payload["text"]
    assert text.startswith("⏰ Reminder: TD-2026-00001 (access) is due in 3 days (3 business")
    assert "(late)" not in text
    assert "2026-03-12 23:59 PKT" in text and "Not claimed yet" in text
    assert await next_look(sessions, ticket_id) == utc(2026, 3, 11, 18, 59, 59)


async def test_the_assignee_is_reminded_in_private_and_admins_get_escalations(
    sessions: SessionFactory,
) -> None:
    clock = Clock(utc(2026, 3, 11, 19, 0))
    ticket_id = await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU)
    async with transaction(sessions) as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        ticket.assignee_user_id, ticket.assignee_name = ASSIGNEE, "Ayesha"
    job = ReminderPass(sessions, Tenants([PK]), now=clock)
    await job.run()
    clock.at = THU + timedelta(seconds=5)
    await job.run()
    rows = await outbox_rows(sessions)
    assert [r.recipient for r in rows] == [str(ASSIGNEE), *map(str, ADMINS)]
    assert "Assigned to Ayesha" in rows[0].payload["text"]
    assert rows[1].payload["text"].startswith("🚨 Overdue: TD-2026-00001 (access) was due")


async def test_escalations_repeat_until_closed_and_catch_up_once_after_downtime(
    sessions: SessionFactory,
) -> None:
    clock = Clock(THU)
    ticket_id = await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU)
    job = ReminderPass(sessions, Tenants([PK]), now=clock)
    await job.run()  # escalation 0
    clock.at = THU + timedelta(days=3, hours=2)  # down for three days
    await job.run()
    await job.run()
    async with sessions() as session:
        sent = await store.sent_for(session, ticket_id)
    assert [(r.kind, r.slot, r.late) for r in sent] == [
        ("overdue", "0", False),
        ("overdue", "3", True),
    ]
    texts = [r.payload["text"] for r in await outbox_rows(sessions)]
    assert len(texts) == 2 * len(ADMINS)
    assert all("(late)" in t for t in texts[2:]) and "3 days 2 hours ago" in texts[-1]

    async with transaction(sessions) as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        ticket.status = TicketStatus.RESOLVED
        await session.flush()
        # closed: the trigger takes its clock row away (nothing more to look at)
        assert await session.get(TicketClock, ticket_id, populate_existing=True) is None
    clock.at = THU + timedelta(days=9)
    await job.run()
    assert len(await outbox_rows(sessions)) == 2 * len(ADMINS)
    assert await next_look(sessions, ticket_id) == store.NEVER


async def test_customers_are_nudged_then_unverified_requests_expire(
    sessions: SessionFactory,
) -> None:
    whatsapp = "whatsapp:+923001112233"
    template = "HX" + "ab" * 16
    tenant = policy(whatsapp_templates={"update": template})
    clock = Clock(WAIT)
    waiting = await file_ticket(
        sessions,
        tenant,
        received=WAIT,
        due_at=None,
        status=TicketStatus.AWAITING_VERIFICATION,
        channel="whatsapp",
        address=whatsapp,
        language="ur",
    )
    job = ReminderPass(sessions, Tenants([tenant]), now=clock)
    await job.run()
    clock.at = WAIT + timedelta(hours=23, seconds=1)
    await job.run()
    (nudge,) = await outbox_rows(sessions)
    assert nudge.channel == "whatsapp" and nudge.recipient == whatsapp
    assert nudge.payload["from"] == "whatsapp:+14155230001"
    assert "TD-2026-00001" in nudge.payload["text"] and "تصدیق" in nudge.payload["text"]
    assert "16 مارچ، 2026" in nudge.payload["text"]  # the expiry date, in Urdu

    clock.at = utc(2026, 3, 16, 19, 0)  # 5 business days later
    await job.run()
    await job.run()
    ticket = await ticket_row(sessions, waiting)
    assert ticket.status == TicketStatus.EXPIRED and ticket.closed_at == clock.at
    assert await next_look(sessions, waiting) == store.NEVER
    rows = await outbox_rows(sessions)
    # A week after the customer last wrote: outside WhatsApp's window, so the notice is held
    # (free text, sent when they next write) and the approved template invites them back.
    assert [r.status for r in rows] == ["pending", "held", "pending"]
    held, invitation = rows[1], rows[2]
    assert "بند کر دی گئی" in held.payload["text"] and "content_sid" not in held.payload
    assert held.payload["from"] == invitation.payload["from"] == "whatsapp:+14155230001"
    assert invitation.recipient == whatsapp and invitation.payload["content_sid"] == template
    variables = json.loads(invitation.payload["content_variables"])
    assert variables == {"1": "Test Desk", "2": translate("ur", window.INVITATION)}
    async with sessions() as session:
        history = await tickets.events_of(session, waiting)
    assert history[-1].kind == "expired" and history[-1].actor == "system"
    assert history[-1].data == {
        "status": "expired",
        "reason": "unverified",
        "after": "5 business days",
    }


@pytest.mark.parametrize(
    ("written_to", "sent_from"),
    [
        ("whatsapp:+971501230002", "whatsapp:+971501230002"),  # the Gulf number they used
        (None, "whatsapp:+14155230001"),  # not known (wrote before it was recorded)
        ("whatsapp:+14155239999", "whatsapp:+14155230001"),  # no longer the business's
    ],
)
async def test_a_customer_hears_from_the_number_they_wrote_to(
    sessions: SessionFactory, written_to: str | None, sent_from: str
) -> None:
    tenant = policy(
        channels={"whatsapp_numbers": ["+14155230001", "+971501230002"]},
    )
    await file_ticket(
        sessions,
        tenant,
        received=WAIT,
        due_at=None,
        status=TicketStatus.AWAITING_VERIFICATION,
        channel="whatsapp",
        address="whatsapp:+971551112233",
        written_to=written_to,
    )
    clock = Clock(WAIT)
    job = ReminderPass(sessions, Tenants([tenant]), now=clock)
    await job.run()
    clock.at = WAIT + timedelta(hours=23, seconds=1)
    await job.run()
    (nudge,) = await outbox_rows(sessions)
    assert nudge.recipient == "whatsapp:+971551112233"
    assert nudge.payload["from"] == sent_from


async def test_nudges_of_a_batch_go_in_bulk_unless_the_window_has_closed(
    engine: AsyncEngine, sessions: SessionFactory
) -> None:
    """Customers waiting 23 hours are nudged with the batch's bulk statements, from the
    number they wrote to; one whose last message is more than 24 hours old is handled on
    its own: the nudge is held and the approved template invites them back."""
    template = "HX" + "cd" * 16
    tenant = policy(
        channels={"whatsapp_numbers": ["+14155230001", "+971501230002"]},
        whatsapp_templates={"update": template},
    )
    since = NOW - timedelta(hours=23, minutes=30)
    ids = [
        await file_ticket(
            sessions,
            tenant,
            received=since,
            due_at=THU + timedelta(days=30),
            status=TicketStatus.AWAITING_REQUESTER,
            channel="whatsapp",
            address=f"whatsapp:+9715511122{n:02d}",
            written_to="whatsapp:+971501230002",
            last_inbound=since - timedelta(hours=7) if n == 0 else since,
        )
        for n in range(12)
    ]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    job = ReminderPass(sessions, Tenants([tenant]), now=Clock(NOW))
    await job.adopt_policies(NOW)
    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        report = await job.run()
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert (report.sent, report.by_kind) == (12, {"requester_nudge": 12})
    rows = await outbox_rows(sessions)
    (held,) = [r for r in rows if r.status == "held"]
    assert held.ticket_id == ids[0] and held.recipient == "whatsapp:+971551112200"
    (invitation,) = [r for r in rows if "content_sid" in r.payload]
    assert invitation.recipient == held.recipient and invitation.status == "pending"
    nudged = [r for r in rows if r not in (held, invitation)]
    assert sorted(r.ticket_id for r in nudged) == ids[1:]
    for row in nudged:
        assert row.status == "pending" and row.payload["from"] == "whatsapp:+971501230002"
        assert row.payload["text"].startswith("Your request TD-2026-000")
    # the eleven in bulk cost a handful of statements; the held one costs its own few
    assert len(statements) <= 30, statements


async def test_a_requester_who_is_asked_something_is_nudged_once(sessions: SessionFactory) -> None:
    clock = Clock(OPEN_SINCE)
    ticket_id = await file_ticket(
        sessions, PK, received=OPEN_SINCE, due_at=THU, address="5550001", language="ar"
    )
    asked = utc(2026, 3, 10, 10, 0)
    async with transaction(sessions) as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        ticket.status = TicketStatus.AWAITING_REQUESTER
        ticket.updated_at = asked
        await tickets.add_event(
            session,
            ticket,
            actor="staff:21",
            kind="asked",
            at=asked,
            data={"status": ticket.status},
        )
    job = ReminderPass(sessions, Tenants([PK]), now=clock)
    for clock.at in (asked, asked + timedelta(hours=23), asked + timedelta(hours=23, minutes=30)):
        await job.run()
    rows = [r for r in await outbox_rows(sessions) if r.recipient == "5550001"]
    assert len(rows) == 1 and "رسالتنا الأخيرة" in rows[0].payload["text"]


async def test_a_ticket_of_an_unknown_tenant_is_left_alone(sessions: SessionFactory) -> None:
    stray = policy(slug="gone", ref_prefix="GONE")
    ticket_id = await file_ticket(sessions, stray, received=OPEN_SINCE, due_at=THU)
    job = ReminderPass(sessions, Tenants([PK]), now=Clock(THU + timedelta(days=1)))
    assert (await job.run()).looked_at == 1
    assert await outbox_rows(sessions) == []
    assert await next_look(sessions, ticket_id) == store.NEVER


async def test_one_broken_ticket_does_not_stop_the_others(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import bot.reminders

    good = await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU)
    bad = await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU + timedelta(days=1))
    real = bot.reminders.plan

    def fragile(facts: Facts, tenant: Tenant, now: datetime, **kw: Any) -> Any:
        if facts.due_at != THU:
            raise RuntimeError("boom")
        return real(facts, tenant, now, **kw)

    monkeypatch.setattr(bot.reminders, "plan", fragile)
    now = THU + timedelta(minutes=1)
    with caplog.at_level(logging.ERROR):
        report = await ReminderPass(sessions, Tenants([PK]), now=Clock(now)).run()
    assert (report.sent, report.failed) == (1, 1)
    assert "TD-2026-00002 failed" in caplog.text
    assert await next_look(sessions, bad) == now + bot.reminders.RETRY_AFTER
    assert await next_look(sessions, good) == THU + timedelta(days=1)


# --- batches: planned in Python, staff reminders claimed and queued in bulk ----------------

NOW = THU + timedelta(minutes=1)  # escalation 0 of THU; the 1-business-day reminder of FRI
FRI = THU + timedelta(days=1)


async def file_mixed_desk(sessions: SessionFactory) -> dict[str, int]:
    """Six tickets that at NOW take every way through a pass; their ids by name."""
    ids = {
        "overdue": await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU),
        "assigned": await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=FRI),
        "threaded": await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=FRI),
        "quiet": await file_ticket(
            sessions, PK, received=OPEN_SINCE, due_at=THU + timedelta(days=30)
        ),
        "nudge": await file_ticket(  # waits for the customer: 23 hours are up, a nudge
            sessions,
            PK,
            received=NOW - timedelta(hours=23, minutes=30),
            due_at=THU + timedelta(days=30),
            status=TicketStatus.AWAITING_REQUESTER,
            address="5550002",
        ),
        "stray": await file_ticket(
            sessions, policy(slug="gone", ref_prefix="GONE"), received=OPEN_SINCE, due_at=THU
        ),
    }
    async with transaction(sessions) as session:
        assigned = await session.get(Ticket, ids["assigned"])
        threaded = await session.get(Ticket, ids["threaded"])
        assert assigned is not None and threaded is not None
        assigned.assignee_user_id, assigned.assignee_name = ASSIGNEE, "Ayesha"
        threaded.staff_thread_id = 77
    return ids


def key(ticket_id: int, kind: str, anchor: datetime, slot: str, to: object) -> str:
    return f"clock:{ticket_id}:{kind}:{anchor.isoformat()}:{slot}:{to}"


async def forget_summaries(sessions: SessionFactory) -> None:
    """Make every ticket look filed before migration 0014: no history summary on its row."""
    table = Ticket.__table__  # type: ignore[attr-defined]
    empty = dict.fromkeys(("history_status", "history_status_at", "history_due_set_at"))
    async with transaction(sessions) as session:
        await session.exec(sa.update(table).values(**empty))  # type: ignore[call-overload]


async def summaries(sessions: SessionFactory, ids: dict[str, int]) -> dict[str, tuple[bool, ...]]:
    """For each ticket: whether its row has a summary, and whether it is its history's."""
    found = {}
    async with sessions() as session:
        for name, ticket_id in ids.items():
            row = await ticket_row(sessions, ticket_id)
            kept = Summary.kept_on(row)
            events = await events_of(session, ticket_id)
            found[name] = (kept.status is not None, kept == summarize(events))
    return found


@pytest.mark.parametrize("summaries_kept", [True, False], ids=["summaries", "older rows"])
@pytest.mark.parametrize("way", ["bulk", "one by one"])
async def test_a_batch_sends_what_one_ticket_at_a_time_would(
    sessions: SessionFactory,
    way: str,
    summaries_kept: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same claims, outbox rows, next looks and counts whether the batch's staff
    reminders go in bulk or, when those statements fail, one ticket at a time; and whether
    the tickets' rows keep their history summaries or are older than that (the pass then
    reads their histories, and keeps the summaries from then on)."""
    ids = await file_mixed_desk(sessions)
    if not summaries_kept:
        await forget_summaries(sessions)
        assert set((await summaries(sessions, ids)).values()) == {(False, False)}
    if way == "one by one":

        async def broken(*_args: Any, **_kw: Any) -> None:
            raise RuntimeError("the bulk insert failed")

        monkeypatch.setattr(store, "queue", broken)
    job = ReminderPass(sessions, Tenants([PK]), now=Clock(NOW), batch=4)  # two batches
    started = datetime.now(UTC)
    with caplog.at_level(logging.WARNING):
        report = await job.run()
    bulk_failed = "one ticket at a time" in caplog.text
    assert bulk_failed is (way == "one by one")
    assert "GONE-2026-00001 belongs to no loaded tenant" in caplog.text
    assert (report.looked_at, report.sent, report.already_sent, report.failed) == (6, 4, 0, 0)
    assert report.by_kind == {"overdue": 1, "before": 2, "requester_nudge": 1}

    async with sessions() as session:
        sent = list(await session.exec(select(ReminderSent).order_by(col(ReminderSent.id))))
    assert sorted((r.ticket_id, r.kind, r.anchor_at, r.slot, r.due_at, r.late) for r in sent) == [
        (ids["overdue"], "overdue", THU, "0", THU, False),
        (ids["assigned"], "before", FRI, "1 business day", THU, False),
        (ids["threaded"], "before", FRI, "1 business day", THU, False),
        (ids["nudge"], "requester_nudge", NOW - timedelta(hours=23, minutes=30), "",
         NOW - timedelta(minutes=30), False),
    ]  # fmt: skip
    assert all(r.sent_at == NOW for r in sent)

    rows = await outbox_rows(sessions)
    found = {(r.ticket_id, r.recipient): r for r in rows}
    assert len(found) == len(rows) == 5
    for row in rows:
        assert (row.status, row.attempts, row.tenant) == ("pending", 0, PK.slug)
        assert (row.locked_until, row.locked_by, row.sent_at, row.last_error) == (None,) * 4
        assert started <= row.created_at <= datetime.now(UTC)  # queued now, as `enqueue` does
        assert started <= row.next_attempt_at <= datetime.now(UTC)
    overdue = [found[ids["overdue"], str(admin)] for admin in ADMINS]
    for admin, row in zip(ADMINS, overdue, strict=True):
        assert row.channel == "telegram"
        assert row.dedupe_key == key(ids["overdue"], "overdue", THU, "0", admin)
        assert row.payload == {
            "text": "🚨 Overdue: TD-2026-00001 (access) was due at 2026-03-12 23:59 PKT, "
            "1 minute ago. Not claimed yet."
        }
    assigned = found[ids["assigned"], str(ASSIGNEE)]
    assert assigned.dedupe_key == key(ids["assigned"], "before", FRI, "1 business day", ASSIGNEE)
    assert assigned.payload == {
        "text": "⏰ Reminder: TD-2026-00002 (access) is due in 23 hours 59 minutes "
        "(1 business day left), at 2026-03-13 23:59 PKT. Assigned to Ayesha."
    }
    threaded = found[ids["threaded"], str(STAFF_CHAT)]
    assert threaded.payload["thread_id"] == 77
    assert threaded.dedupe_key == key(ids["threaded"], "before", FRI, "1 business day", STAFF_CHAT)
    nudge = found[ids["nudge"], "5550002"]
    assert nudge.dedupe_key == key(
        ids["nudge"], "requester_nudge", NOW - timedelta(hours=23, minutes=30), "", "customer"
    )
    assert "TD-2026-00005" in nudge.payload["text"]

    next_looks = {name: await next_look(sessions, i) for name, i in ids.items()}
    assert next_looks == {
        "overdue": THU + timedelta(days=1),  # escalation 1
        "assigned": utc(2026, 3, 13, 14, 59, 59),  # 4 hours before FRI
        "threaded": utc(2026, 3, 13, 14, 59, 59),
        "quiet": utc(2026, 4, 8, 18, 59, 59),  # 3 business days before its deadline
        "nudge": utc(2026, 4, 8, 18, 59, 59),
        "stray": store.NEVER,
    }
    assert "Overdue" not in caplog.text and "Reminder" not in caplog.text  # no message text
    assert await summaries(sessions, ids) == dict.fromkeys(ids, (True, True))

    again = await ReminderPass(sessions, Tenants([PK]), now=Clock(NOW)).run()
    assert again.looked_at == 0 and len(await outbox_rows(sessions)) == 5


async def test_staff_reminders_of_a_batch_cost_a_few_statements_not_a_few_per_ticket(
    engine: AsyncEngine, sessions: SessionFactory
) -> None:
    for _ in range(30):
        await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    job = ReminderPass(sessions, Tenants([PK]), now=Clock(NOW))
    await job.adopt_policies(NOW)  # once per process, before its first pass
    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        report = await job.run()
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert (report.looked_at, report.sent) == (30, 30)
    # 30 escalations to each admin at once: one digest each
    assert [r.recipient for r in await outbox_rows(sessions)] == [str(a) for a in ADMINS]
    # Where the pass stops (its slice), how many are unplanned (too few to plan in sets),
    # the tickets, the claims, the outbox rows, the next looks (and the savepoint around
    # the bulk statements); 30 one by one took over 150.
    assert Counter(statements)["INSERT"] == 2 and Counter(statements)["UPDATE"] == 1
    assert len(statements) <= 16, statements


def reminders_in(message: OutboundMessage) -> int:
    """How many reminders an outbox message carries: a digest says it, else one."""
    found = re.match(r"⏰ (\d+) reminders at once", message.payload["text"])
    assert (found is not None) == (message.ticket_id is None), message.payload["text"]
    return int(found.group(1)) if found else 1


async def test_a_burst_of_reminders_to_one_chat_goes_as_one_digest(
    sessions: SessionFactory,
) -> None:
    """More than DIGEST_ABOVE reminders due at once for one chat: one message saying how
    many and naming the first DIGEST_LINES, earliest deadline first (each one claimed, so
    never sent again); a chat with fewer gets them one by one, in the ticket's thread."""
    burst = DIGEST_LINES + 2
    to_chat = [
        await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU - timedelta(hours=n))
        for n in reversed(range(burst))  # the first filed has the earliest deadline
    ]
    assigned = [await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in "ab"]
    async with transaction(sessions) as session:
        for ticket_id in assigned:
            ticket = await session.get(Ticket, ticket_id)
            assert ticket is not None
            ticket.assignee_user_id, ticket.assignee_name = ASSIGNEE, "Ayesha"
    clock = Clock(OPEN_SINCE)
    job = ReminderPass(sessions, Tenants([PK]), now=clock)
    await job.run()  # plans them: the 3-business-days reminders from Monday 9 March
    clock.at = utc(2026, 3, 10, 12, 0)  # a day of downtime later: all due at once
    report = await job.run()
    assert report.sent == burst + len(assigned)
    rows = await outbox_rows(sessions)
    (digest,) = [r for r in rows if r.recipient == str(STAFF_CHAT)]
    lines = digest.payload["text"].split("\n")
    assert lines[0] == (
        f"⏰ {burst} reminders at once: 0 overdue, {burst} due soon. Earliest deadline first:"
    )
    assert lines[1] == (
        "• TD-2026-00001 (access): due in 1 day 5 hours, 2026-03-11 21:59 PKT; not claimed yet"
    )
    named = [line.split()[1] for line in lines[1:-1]]
    assert named == [f"TD-2026-{n:05d}" for n in range(1, DIGEST_LINES + 1)]
    assert lines[-1] == "…and 2 more: /overdue and /tickets list them."
    assert digest.ticket_id is None and "thread_id" not in digest.payload
    alone = [r for r in rows if r.recipient == str(ASSIGNEE)]
    assert sorted(r.ticket_id for r in alone) == assigned
    assert all(r.payload["text"].startswith("⏰ Reminder (late): ") for r in alone)
    async with sessions() as session:
        claimed = sorted(r.ticket_id for r in await session.exec(select(ReminderSent)))
    assert claimed == sorted(to_chat + assigned)

    clock.at += timedelta(minutes=1)
    assert (await job.run()).sent == 0  # claimed: never again, in a digest or alone
    assert len(await outbox_rows(sessions)) == len(rows)


async def test_a_catch_up_is_claimed_with_its_planning_and_each_chat_gets_one_digest(
    sessions: SessionFactory,
) -> None:
    """Past `in_sets_from` tickets due at once, the pass claims their reminders with the
    planning in sets, in one statement, whatever its batch size: each chat gets one
    digest for all of them, none is looked at one by one, and each next look is the one
    after what was sent."""
    count = 120
    ids = [await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in range(count)]
    clock = Clock(OPEN_SINCE)
    job = ReminderPass(sessions, Tenants([PK]), now=clock, batch=25, in_sets_from=100)
    assert (await job.run()).planned == count  # nothing due yet
    clock.at = NOW  # the deadline has passed: escalation 0 of each, to every admin
    report = await job.run()
    assert (report.looked_at, report.sent, report.by_kind) == (0, count, {"overdue": count})
    rows = await outbox_rows(sessions)
    assert sorted(r.recipient for r in rows) == [str(a) for a in ADMINS]
    for row in rows:
        assert row.payload["text"].startswith(f"⏰ {count} reminders at once: {count} overdue")
    async with sessions() as session:
        claimed = list(await session.exec(select(ReminderSent)))
    assert sorted(r.ticket_id for r in claimed) == ids
    assert {(r.kind, r.anchor_at, r.slot, r.late) for r in claimed} == {
        ("overdue", THU, "0", False)
    }
    for ticket_id in ids:
        assert await next_look(sessions, ticket_id) == THU + timedelta(days=1)  # escalation 1
    clock.at += timedelta(minutes=5)
    assert (await job.run()).sent == 0


@pytest.mark.parametrize("in_sets_from", [1, 10**9], ids=["in sets", "one by one"])
async def test_a_catch_up_goes_in_slices_of_the_lowest_ids(
    sessions: SessionFactory, in_sets_from: int
) -> None:
    """A pass looks at `slice` tickets at most, the lowest ids first, and says it left
    more; the next goes on from there, and together they send what one pass would. (The
    tickets come after the policy is adopted: the regular passes' slices, not adoption's.)"""
    job = ReminderPass(sessions, Tenants([PK]), now=Clock(NOW), in_sets_from=in_sets_from)
    await job.adopt_policies(NOW)
    ids = [await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in range(7)]
    job.slice = 3
    reports, planned = [], []
    while not reports or reports[-1].more:
        assert len(reports) < 5, "the passes do not move on"
        reports.append(await job.run())
        planned.append([t for t in ids if await next_look(sessions, t) is not None])
    assert planned == [ids[:3], ids[:6], ids]
    assert [r.more for r in reports] == [True, True, False]
    assert [r.by_kind for r in reports] == [{"overdue": 3}, {"overdue": 3}, {"overdue": 1}]
    async with sessions() as session:
        claimed = sorted(r.ticket_id for r in await session.exec(select(ReminderSent)))
    assert claimed == ids


async def _passes(job: ReminderPass) -> list[PassReport]:
    """Passes until one leaves nothing, as the scheduler runs them (`Clock.tick`)."""
    reports = [await job.run()]
    while reports[-1].more:
        assert len(reports) < 10, "the passes do not move on"
        reports.append(await job.run())
    return reports


async def test_a_new_policy_is_adopted_a_slice_a_pass_and_recorded_with_the_last(
    sessions: SessionFactory,
) -> None:
    """A tenant whose policy changed has its open tickets planned again a slice a pass;
    the policy is recorded with the last slice only, so a process that stops before then
    starts over, and sends nothing twice."""
    ids = [await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in range(7)]

    def job() -> ReminderPass:
        found = ReminderPass(sessions, Tenants([PK]), now=Clock(NOW), in_sets_from=1)
        found.slice = 3
        return found

    async def recorded() -> bool:
        async with sessions() as session:
            fingerprint = policy_fingerprint(PK)
            return not await store.policy_changed(session, tenant=PK.slug, fingerprint=fingerprint)

    stopped = job()
    first = await stopped.run()
    assert (first.more, first.planned, first.by_kind) == (True, 3, {"overdue": 3})
    assert [t for t in ids if await next_look(sessions, t) is not None] == ids[:3]
    assert not await recorded()

    reports = await _passes(job())  # the next process starts over, then its regular pass
    assert [r.by_kind for r in reports] == [{}, {"overdue": 3}, {"overdue": 1}, {}]
    assert [await next_look(sessions, t) is not None for t in ids] == [True] * 7
    assert await recorded()
    async with sessions() as session:
        claimed = sorted(r.ticket_id for r in await session.exec(select(ReminderSent)))
    assert claimed == ids


async def test_the_clock_adopts_a_policy_in_slices_that_change_nothing(
    sessions: SessionFactory,
) -> None:
    """One wake goes through every slice of an adoption, even slices whose plans stay
    as they were (nothing written), then records the policy."""
    ids = [await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in range(7)]
    await _passes(ReminderPass(sessions, Tenants([PK]), now=Clock(OPEN_SINCE)))
    looks = [await next_look(sessions, t) for t in ids]
    async with transaction(sessions) as session:  # as if the policy had changed
        await session.exec(sa.delete(ClockPolicy))  # type: ignore[call-overload]
    scheduler = Scheduler(sessions, Tenants([PK]), now=Clock(OPEN_SINCE))
    scheduler.reminders.slice = 3
    await scheduler.tick()
    assert scheduler.passes == 3  # three slices (the last with the regular pass: none wrote)
    assert [await next_look(sessions, t) for t in ids] == looks
    async with sessions() as session:
        fingerprint = policy_fingerprint(PK)
        assert not await store.policy_changed(session, tenant=PK.slug, fingerprint=fingerprint)


async def test_the_clock_runs_the_next_slice_at_once(sessions: SessionFactory) -> None:
    """One wake of the scheduler goes through a whole catch-up, a slice a pass."""
    scheduler = Scheduler(sessions, Tenants([PK]), now=Clock(NOW))
    await scheduler.reminders.adopt_policies(NOW)
    ids = [await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in range(7)]
    scheduler.reminders.slice = 3
    await scheduler.tick()
    assert scheduler.passes == 3
    assert [await next_look(sessions, t) is not None for t in ids] == [True] * 7


@pytest.mark.parametrize("in_sets_from", [1, 10**9], ids=["in sets", "one by one"])
async def test_a_ticket_that_may_have_expired_is_planned_alone(
    sessions: SessionFactory, in_sets_from: int
) -> None:
    """A ticket awaiting verification whose expiry may have come is not claimed with the
    planning in sets: planned alone, an expired one expires and sends nothing else (its
    deadline's escalation included); one still short of its expiry gets its escalation."""
    expired = await file_ticket(
        sessions, PK, received=OPEN_SINCE, due_at=THU, status=TicketStatus.AWAITING_VERIFICATION
    )
    later = THU - timedelta(days=1)  # waiting since Wednesday: 5 business days not yet over
    waiting = await file_ticket(
        sessions, PK, received=later, due_at=THU, status=TicketStatus.AWAITING_VERIFICATION
    )
    job = ReminderPass(sessions, Tenants([PK]), now=Clock(NOW), in_sets_from=in_sets_from)
    report = PassReport()
    for one in await _passes(job):  # in sets: the policy adopted, then the regular pass
        report.add(one)
    assert report.by_kind == {"expire": 1, "overdue": 1}
    async with sessions() as session:
        claimed = sorted((r.ticket_id, r.kind) for r in await session.exec(select(ReminderSent)))
    assert claimed == [(expired, "expire"), (waiting, "overdue")]
    assert (await ticket_row(sessions, expired)).status == TicketStatus.EXPIRED
    assert (await ticket_row(sessions, waiting)).status == TicketStatus.AWAITING_VERIFICATION


async def test_a_ticket_that_breaks_the_bulk_statements_fails_alone(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import bot.reminders

    first, broken, last = [
        await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in range(3)
    ]
    real = bot.reminders.staff_text

    class Unwritable:
        """Not JSON: sealing the outbox payload fails, in bulk and one by one alike."""

    def fragile(ticket: Any, *args: Any) -> Any:
        return Unwritable() if ticket.id == broken else real(ticket, *args)

    monkeypatch.setattr(bot.reminders, "staff_text", fragile)
    with caplog.at_level(logging.WARNING):
        report = await ReminderPass(sessions, Tenants([PK]), now=Clock(NOW)).run()
    assert (report.looked_at, report.sent, report.already_sent, report.failed) == (3, 2, 0, 1)
    assert "bulk reminders for 3 tickets failed (StatementError)" in caplog.text
    assert "TD-2026-00002 failed" in caplog.text
    assert {r.ticket_id for r in await outbox_rows(sessions)} == {first, last}
    async with sessions() as session:
        claimed = {r.ticket_id for r in await session.exec(select(ReminderSent))}
    assert claimed == {first, last}  # the broken ticket's claim went with its savepoint
    assert await next_look(sessions, broken) == NOW + RETRY_AFTER
    assert await next_look(sessions, first) == THU + timedelta(days=1)

    monkeypatch.setattr(bot.reminders, "staff_text", real)  # mended: sent at its next look
    later = NOW + RETRY_AFTER
    report = await ReminderPass(sessions, Tenants([PK]), now=Clock(later)).run()
    assert (report.looked_at, report.sent, report.failed) == (1, 1, 0)
    assert len(await outbox_rows(sessions)) == 3 * len(ADMINS)


@pytest.mark.parametrize("summaries_kept", [True, False], ids=["in sets", "older rows"])
async def test_what_was_claimed_or_queued_before_is_not_sent_again(
    sessions: SessionFactory, summaries_kept: bool
) -> None:
    """Tickets planned again find their claims: in sets, the reminder due now was sent, so
    they look next at the following one; one by one (rows older than migration 0014),
    each claim found counts as already sent. A claim whose message is already in the
    outbox does not queue it a second time."""
    ids = [await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in range(3)]
    job = ReminderPass(sessions, Tenants([PK]), now=Clock(NOW), in_sets_from=1)
    assert (await job.run()).sent == 3
    table = TicketClock.__table__  # type: ignore[attr-defined]
    async with transaction(sessions) as session:
        await session.exec(sa.update(table).values(next_at=None))
    if not summaries_kept:
        await forget_summaries(sessions)
    report = await job.run()
    counts = (report.planned, report.looked_at, report.sent, report.already_sent)
    assert counts == ((3, 0, 0, 0) if summaries_kept else (0, 3, 0, 3))
    for ticket_id in ids:
        assert await next_look(sessions, ticket_id) == THU + timedelta(days=1)  # escalation 1
    async with transaction(sessions) as session:  # planned again: no next look changes
        again = PassReport()
        assert await job.plan_in_sets(session, store.Scope((PK.slug,)), NOW, again)
        assert (again.planned, again.sent) == (0, 0)

    async with transaction(sessions) as session:  # the claims lost, the messages kept
        await session.exec(sa.delete(ReminderSent.__table__))  # type: ignore[attr-defined]
        await session.exec(sa.update(table).values(next_at=None))
    report = await job.run()
    assert (report.sent, report.failed) == (3, 0)
    rows = await outbox_rows(sessions)
    assert len(rows) == 3 * len(ADMINS) and {r.ticket_id for r in rows} == set(ids)


async def test_a_clock_stopped_while_awaiting_the_requester_moves_the_deadline(
    sessions: SessionFactory,
) -> None:
    start = utc(2026, 6, 1, 9, 0)
    tenant = policy(pause_while_awaiting_requester=True)
    clock = Clock(start)
    ticket_id = await file_ticket(
        sessions, tenant, received=start, due_at=start + timedelta(seconds=100), kind="erasure"
    )
    job = ReminderPass(sessions, Tenants([tenant]), now=clock)
    asked, answered = start + timedelta(seconds=10), start + timedelta(seconds=70)
    for at, status in ((asked, TicketStatus.AWAITING_REQUESTER), (answered, TicketStatus.OPEN)):
        clock.at = at
        await job.run()
        async with transaction(sessions) as session:
            ticket = await session.get(Ticket, ticket_id)
            assert ticket is not None
            ticket.status = status
            await tickets.add_event(
                session, ticket, actor="staff:21", kind="status", at=at, data={"status": status}
            )
    await job.run()
    # Stopped for 60 seconds: the 100-second deadline now ends at 160 seconds.
    assert (await ticket_row(sessions, ticket_id)).due_at == start + timedelta(seconds=160)
    async with sessions() as session:
        moved = (await tickets.events_of(session, ticket_id))[-1]
    assert (
        moved.kind == "deadline_moved"
        and moved.data["due_at"] == (start + timedelta(seconds=160)).isoformat()
    )


@pytest.mark.parametrize("in_sets_from", [1, 200], ids=["in sets", "one by one"])
async def test_a_changed_reminder_policy_plans_the_open_tickets_again(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture, in_sets_from: int
) -> None:
    """A tenant whose policy changed has its open tickets planned again: in sets, or (as
    few as here) unplanned for the pass to plan one by one; the other tenant's are left."""
    clock = Clock(OPEN_SINCE)
    open_id = await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU)
    closed_id = await file_ticket(
        sessions, PK, received=OPEN_SINCE, due_at=THU, status=TicketStatus.RESOLVED
    )
    other = policy(
        slug="other-desk",
        ref_prefix="OD",
        channels={"telegram_start": "other-desk", "whatsapp_numbers": ["+14155230002"]},
    )
    other_id = await file_ticket(sessions, other, received=OPEN_SINCE, due_at=THU)
    assert await next_look(sessions, closed_id) == store.NEVER  # filed closed: never looked at
    first = ReminderPass(sessions, Tenants([PK, other]), now=clock, in_sets_from=in_sets_from)
    assert (await first.run()).looked_at == (0 if in_sets_from == 1 else 2)
    assert await next_look(sessions, open_id) == utc(2026, 3, 9, 18, 59, 59)
    other_planned = await next_look(sessions, other_id)
    assert other_planned == utc(2026, 3, 9, 18, 59, 59)

    # Restarted with a reminder five business days ahead: Thursday 5 March, 23:59:59 PKT.
    earlier = policy(reminders={"before": ["5 business days", "1 business day"]})
    clock.at = utc(2026, 3, 5, 19, 0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bot.reminders"):
        tenants = Tenants([earlier, other])
        report = await ReminderPass(sessions, tenants, now=clock, in_sets_from=in_sets_from).run()
    # sent by the planning in sets, or looked at and sent; the other tenant's ticket is left alone
    assert (report.looked_at, report.sent) == ((0, 1) if in_sets_from == 1 else (1, 1))
    assert await next_look(sessions, other_id) == other_planned
    assert "other-desk has a new reminder policy" not in caplog.text
    async with sessions() as session:
        (sent,) = await store.sent_for(session, open_id)
    assert (sent.slot, sent.late) == ("5 business days", False)
    if in_sets_from == 1:
        assert "test-desk has a new reminder policy\n" in caplog.text
        assert "1 open tickets planned again in sets" in caplog.text
    else:
        assert "test-desk has a new reminder policy; 1 open tickets to plan again" in caplog.text
    assert await next_look(sessions, closed_id) == store.NEVER

    # Another process with the same policy finds it adopted and nothing to plan again.
    again = ReminderPass(sessions, Tenants([earlier, other]), now=clock)
    assert (await again.run()).looked_at == 0
    planned = await next_look(sessions, open_id)
    assert planned == utc(2026, 3, 11, 18, 59, 59)  # 1 business day before


# --- two schedulers, one PostgreSQL database ------------------------------------------


async def _due_without_locks(
    session: Any, *, now: datetime, limit: int, up_to: int | None = None
) -> list[ToPlan]:
    """`due_tickets` minus FOR UPDATE SKIP LOCKED: both schedulers see the same tickets."""
    table, clock = Ticket.__table__, TicketClock.__table__  # type: ignore[attr-defined]
    connection = await session.connection()
    sliced = [] if up_to is None else [table.c.id <= up_to]
    result = await connection.execute(
        sa.select(*store.PLAN_COLUMNS)
        .join(clock, clock.c.ticket_id == table.c.id)
        .where(clock.c.next_at.is_(None) | (clock.c.next_at <= now), *sliced)
        .order_by(table.c.id)
        .limit(limit)
    )
    return [ToPlan(*row) for row in result]


@pytest.mark.parametrize(
    "locking", ["skip-locked", "claims-only", "in sets", "in sets and in batches"]
)
async def test_two_schedulers_on_one_postgres_send_each_reminder_exactly_once(
    postgres_url: str,
    locking: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two passes with their own connection pools (as two processes have) race over 1,000
    tickets at each of a series of moments; every reminder and escalation goes out once.

    "claims-only" takes away the row locks, so both passes work on the same tickets at the
    same time and only the unique claim in `reminder_sent` stands between them. "in sets":
    both claim what is due with their planning in sets (one waits for the other's);
    "in sets and in batches": one does, the other takes the due tickets in batches.
    """
    in_sets_from = {"in sets": (1, 1), "in sets and in batches": (1, 10**9)}.get(
        locking, (10**9, 10**9)
    )
    if locking == "claims-only":
        monkeypatch.setattr(store, "due_tickets", _due_without_locks)
    tenant = policy(reminders={"before": ["2 hours", "1 hour"], "overdue_every": "2 hours"})
    count, base = 1000, utc(2026, 6, 1, 6, 0)
    engines: list[AsyncEngine] = [create_engine(postgres_url, pool_size=5) for _ in range(2)]
    try:
        first = session_factory(engines[0])
        async with transaction(first) as session:
            for i in range(count):
                await tickets.create_ticket(
                    session,
                    tenant=tenant.slug,
                    ref_prefix=tenant.ref_prefix,
                    kind="access",
                    channel="telegram",
                    received_at=base,
                    due_at=base + timedelta(hours=3, seconds=7 * i),
                    clock_started_at=base,
                )
        clock = Clock(base)
        jobs = [
            ReminderPass(
                session_factory(engine), Tenants([tenant]), now=clock, batch=50, in_sets_from=n
            )
            for engine, n in zip(engines, in_sets_from, strict=True)
        ]
        moments = [base + timedelta(minutes=20 * step) for step in range(1, 19)]  # 6 hours
        sent = already = 0
        with caplog.at_level(logging.ERROR):
            for clock.at in moments:
                reports = await asyncio.gather(*(job.run() for job in jobs))
                sent += sum(r.sent for r in reports)
                already += sum(r.already_sent for r in reports)
        assert caplog.records == []
        end = moments[-1]
        expected = Counter[str]()
        for i in range(count):
            due_at = base + timedelta(hours=3, seconds=7 * i)
            expected["before"] += 2
            expected["overdue"] += int((end - due_at) // timedelta(hours=2)) + 1
        async with first() as session:
            kinds = Counter(row.kind for row in await session.exec(select(ReminderSent)))
            messages = list(await session.exec(select(OutboundMessage)))
        assert kinds == expected
        assert sent == sum(expected.values())
        if locking == "claims-only":
            assert already > 0  # the race really happened, and the claims decided it
        # Reminders go to the staff chat; each escalation to every admin; more than
        # DIGEST_ABOVE of a batch to one chat as a digest that says how many.
        assert sum(map(reminders_in, messages)) == (
            expected["before"] + expected["overdue"] * len(ADMINS)
        )
        assert any(m.ticket_id is None for m in messages)  # digests were among them
        assert len({m.dedupe_key for m in messages}) == len(messages)
    finally:
        for engine in engines:
            await engine.dispose()


# --- the next look's own row ------------------------------------------------------------


async def test_the_next_look_follows_the_ticket_whatever_writes_it(
    sessions: SessionFactory,
) -> None:
    """Triggers keep `ticket_clock` right for writes the ORM never sees: a bulk UPDATE of a
    ticket's deadline or status asks for a new plan; other columns leave the plan alone."""
    ticket_id = await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU)
    assert await next_look(sessions, ticket_id) is None  # born unplanned
    job = ReminderPass(sessions, Tenants([PK]), now=Clock(OPEN_SINCE))
    await job.run()
    assert await next_look(sessions, ticket_id) == utc(2026, 3, 9, 18, 59, 59)

    table = Ticket.__table__  # type: ignore[attr-defined]
    later = THU + timedelta(days=7)
    for values, planned in (
        ({"assignee_name": "Ayesha"}, True),
        ({"due_at": later}, False),
        ({"status": TicketStatus.IN_PROGRESS}, False),
        ({"status": TicketStatus.IN_PROGRESS, "updated_at": OPEN_SINCE}, True),  # unchanged
    ):
        await job.run()
        assert await next_look(sessions, ticket_id) is not None
        async with transaction(sessions) as session:
            await session.exec(sa.update(table).where(table.c.id == ticket_id).values(**values))  # type: ignore[call-overload]
        assert (await next_look(sessions, ticket_id) is not None) is planned, values
    await job.run()
    assert await next_look(sessions, ticket_id) == utc(2026, 3, 16, 18, 59, 59)  # the new deadline


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_engine(
    request: pytest.FixtureRequest, tmp_path: Path, pg_template: str | None
) -> Any:
    """An engine on a database with no tables yet, to migrate step by step."""
    name = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'upgrade.db'}"
    else:
        need(pg_template is not None, "PostgreSQL at 127.0.0.1:5432 is not reachable")
        name = f"rd_upgrade_{uuid.uuid4().hex[:10]}"
        await conftest._pg_execute(f'CREATE DATABASE "{name}"')
        url = conftest._pg_url(name)
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()
        if name is not None:
            await conftest._pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_OLD_TICKET = (
    "INSERT INTO ticket (tenant, ref, year, seq, kind, status, channel, language, "
    "received_at, created_at, updated_at{extra}) VALUES ('test-desk', :ref, 2026, :seq, "
    "'access', :status, 'telegram', 'en', :at, :at, :at{extra_value})"
)


async def _clock_rows(engine: AsyncEngine) -> list[tuple[int, datetime | None]]:
    async with engine.connect() as connection:
        clock = TicketClock.__table__  # type: ignore[attr-defined]
        rows = await connection.execute(
            sa.select(clock.c.ticket_id, clock.c.next_at).order_by(clock.c.ticket_id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_upgrading_to_the_clock_table_keeps_every_plan(empty_engine: AsyncEngine) -> None:
    """Migration 0015 moves each ticket's planned look from its row to `ticket_clock`."""
    engine = empty_engine
    await migrate(engine, "0014")
    planned = utc(2026, 3, 9, 18, 59, 59)
    insert = sa.text(
        _OLD_TICKET.format(extra=", next_reminder_at", extra_value=", :look")
    ).bindparams(sa.bindparam("at", type_=UTCDateTime()), sa.bindparam("look", type_=UTCDateTime()))
    async with engine.begin() as connection:
        for number, look in ((1, planned), (2, None)):
            values = {"ref": f"TD-2026-{number:05d}", "seq": number, "status": "open"}
            await connection.execute(insert, {**values, "at": OPEN_SINCE, "look": look})
    await migrate(engine)
    assert await _clock_rows(engine) == [(1, planned), (2, None)]
    async with engine.connect() as connection:
        columns = await connection.run_sync(
            lambda sync: [c["name"] for c in sa.inspect(sync).get_columns("ticket")]
        )
    assert "next_reminder_at" not in columns and "history_status" in columns


async def test_the_clock_holds_open_tickets_only(empty_engine: AsyncEngine) -> None:
    """Migration 0016: closed tickets lose their clock rows (they are never looked at
    again), and from then on the triggers give a ticket a row while it is open and take it
    away when it closes; reopened, it has one again, unplanned. So every unplanned ticket
    is an open one (planning in sets reads those from their own index on PostgreSQL).
    Downgraded, closed tickets have their "never" rows back, and closing unplans again."""
    engine = empty_engine
    await migrate(engine, "0015")
    insert = sa.text(_OLD_TICKET.format(extra="", extra_value="")).bindparams(
        sa.bindparam("at", type_=UTCDateTime())
    )
    clock = TicketClock.__table__  # type: ignore[attr-defined]
    table = Ticket.__table__  # type: ignore[attr-defined]
    async with engine.begin() as connection:
        for number, status in ((1, "open"), (2, "open"), (3, "resolved")):
            values = {"ref": f"TD-2026-{number:05d}", "seq": number, "status": status}
            await connection.execute(insert, {**values, "at": OPEN_SINCE})
        await connection.execute(  # closed under 0015: unplanned until a pass planned it
            sa.update(table).where(table.c.id == 2).values(status="rejected")
        )
        await connection.execute(sa.update(clock).values(next_at=None))  # and no pass yet
    await migrate(engine)
    assert await _clock_rows(engine) == [(1, None)]

    async def set_status(ticket_id: int, status: str) -> None:
        async with engine.begin() as connection:
            await connection.execute(
                sa.update(table).where(table.c.id == ticket_id).values(status=status)
            )

    async with engine.begin() as connection:  # planned, then closed: its row goes
        await connection.execute(sa.update(clock).values(next_at=THU))
    await set_status(1, "cancelled")
    await set_status(2, "open")
    assert await _clock_rows(engine) == [(2, None)]
    async with engine.begin() as connection:  # filed open and filed closed
        for number, status in ((4, "open"), (5, "expired")):
            values = {"ref": f"TD-2026-{number:05d}", "seq": number, "status": status}
            await connection.execute(insert, {**values, "at": OPEN_SINCE})
    assert await _clock_rows(engine) == [(2, None), (4, None)]
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            indexes = await connection.run_sync(
                lambda sync: [i["name"] for i in sa.inspect(sync).get_indexes("ticket")]
            )
        assert "ix_ticket_open_clock" in indexes

    async with engine.begin() as connection:
        await connection.run_sync(_downgrade_to, "0015")
    never = store.NEVER
    assert await _clock_rows(engine) == [(1, never), (2, None), (3, never), (4, None), (5, never)]
    await set_status(3, "open")
    assert (await _clock_rows(engine))[2] == (3, None)


async def test_claims_name_their_ticket_without_a_foreign_key(empty_engine: AsyncEngine) -> None:
    """Migration 0017: a claim no longer has a foreign key to its ticket (checking it locked
    and wrote each claimed ticket's row), and PostgreSQL's index of open tickets holds
    their assignees. Downgraded, claims of tickets that are gone are deleted and the key
    is back."""
    engine = empty_engine
    await migrate(engine, "0016")
    insert = sa.text(_OLD_TICKET.format(extra="", extra_value="")).bindparams(
        sa.bindparam("at", type_=UTCDateTime())
    )
    sent = ReminderSent.__table__  # type: ignore[attr-defined]

    def claim(ticket_id: int) -> sa.Insert:
        values = {"kind": "overdue", "anchor_at": THU, "slot": "0", "due_at": THU}
        return sa.insert(sent).values(ticket_id=ticket_id, sent_at=NOW, late=False, **values)

    async def keys() -> list[str]:
        async with engine.connect() as connection:
            found = await connection.run_sync(
                lambda sync: sa.inspect(sync).get_foreign_keys("reminder_sent")
            )
        return [key["referred_table"] for key in found]

    async with engine.begin() as connection:
        await connection.execute(
            insert, {"ref": "TD-2026-00001", "seq": 1, "status": "open", "at": OPEN_SINCE}
        )
        await connection.execute(claim(1))
    assert await keys() == ["ticket"]
    with pytest.raises(sa.exc.IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(claim(2))

    await migrate(engine)
    assert await keys() == []
    async with engine.begin() as connection:
        await connection.execute(claim(2))  # no ticket 2: the code never does this
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            definition = await connection.scalar(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_ticket_open_clock'")
            )
        assert "assignee_user_id" in definition

    async with engine.begin() as connection:
        await connection.run_sync(_downgrade_to, "0016")
    assert await keys() == ["ticket"]
    async with engine.connect() as connection:
        left = await connection.execute(sa.select(sent.c.ticket_id))
        assert [row[0] for row in left] == [1]


def _downgrade_to(connection: sa.Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


# --- planning in sets ------------------------------------------------------------------


@pytest.fixture
def twin_url(
    database_url: str, tmp_path: Path, sqlite_template: Path, pg_template: str | None
) -> Iterator[str]:
    """A second fresh database of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        path = tmp_path / "twin.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    yield from conftest._fresh_postgres(pg_template)


TIMELINE_STEP = timedelta(hours=5, minutes=17)  # lands at every hour and minute in turn


async def desk_timeline(
    url: str, in_sets_from: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[list[datetime | None]]]:
    """Fifteen tickets taking every way through the clock, passes every 5 h 17 min for
    three weeks, a desk that changes two of them on the way: what was claimed (ticket by
    order of filing), what was queued, and every ticket's next look after each pass."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    clock = Clock(OPEN_SINCE)
    ids = [
        await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU),
        # its deadline set two days before it ends: the 3-business-day reminder never applies
        await file_ticket(sessions, PK, received=THU - timedelta(days=2), due_at=THU),
        await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=FRI, address="5550001"),
        await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU + timedelta(days=30)),
        # waiting since 2 hours before the first pass: the fifth falls in its nudge's hour
        await file_ticket(
            sessions,
            PK,
            received=OPEN_SINCE - timedelta(hours=2),
            due_at=THU,
            status=TicketStatus.AWAITING_REQUESTER,
            address="5550002",
        ),
        await file_ticket(  # the eleventh pass falls in its nudge's hour
            sessions,
            PK,
            received=OPEN_SINCE + timedelta(hours=29, minutes=30),
            due_at=None,
            status=TicketStatus.AWAITING_VERIFICATION,
            address="5550003",
        ),
        await file_ticket(
            sessions,
            SHORT_EXPIRY,  # the same slug with a 12-hour expiry: only the pass's policy counts
            received=OPEN_SINCE + timedelta(days=3, hours=7),
            due_at=None,
            status=TicketStatus.AWAITING_VERIFICATION,
        ),
        await file_ticket(  # its nudge's hour is over: the first pass plans its expiry
            sessions,
            PK,
            received=OPEN_SINCE - timedelta(hours=30),
            due_at=None,
            status=TicketStatus.AWAITING_VERIFICATION,
        ),
        await file_ticket(
            sessions, PK, received=OPEN_SINCE - timedelta(days=12), due_at=OPEN_SINCE
        ),  # overdue from the start
        await file_ticket(
            sessions, PK, received=OPEN_SINCE, due_at=THU, status=TicketStatus.RESOLVED
        ),
        await file_ticket(
            sessions, SECONDS, received=OPEN_SINCE, due_at=OPEN_SINCE + timedelta(seconds=100)
        ),
        await file_ticket(
            sessions,
            PK,
            received=OPEN_SINCE + timedelta(days=5),
            due_at=OPEN_SINCE + timedelta(days=5, hours=3),  # within 4 hours when set
        ),
        *[
            await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=at)
            for at in (FRI + timedelta(hours=1), PK_AFTER_EID, PK_AFTER_EID)
        ],
    ]
    job = ReminderPass(sessions, Tenants([PK]), now=clock, in_sets_from=in_sets_from)
    looks: list[list[datetime | None]] = []
    changed = False
    while clock.at < OPEN_SINCE + timedelta(days=21):
        if not changed and clock.at >= utc(2026, 3, 8):  # the desk at work
            changed = True
            async with transaction(sessions) as session:
                waiting = await session.get(Ticket, ids[3])
                extended = await session.get(Ticket, ids[0])
                assert waiting is not None and extended is not None
                waiting.status = TicketStatus.AWAITING_REQUESTER
                await tickets.add_event(
                    session, waiting, actor="staff:21", kind="status", at=clock.at,
                    data={"status": "awaiting_requester"},
                )  # fmt: skip
                extended.due_at = THU + timedelta(days=7)
                await tickets.add_event(
                    session, extended, actor="staff:21", kind="extended", at=clock.at,
                    data={"due_at": extended.due_at.isoformat()},
                )  # fmt: skip
        await job.run()
        looks.append([await next_look(sessions, i) for i in ids])
        clock.at += TIMELINE_STEP
    order = {ticket_id: n for n, ticket_id in enumerate(ids)}
    async with sessions() as session:
        sent = sorted(
            (order[r.ticket_id], r.kind, r.anchor_at, r.slot, r.due_at, r.sent_at, r.late)
            for r in await session.exec(select(ReminderSent))
        )
    queued = sorted(
        (order[r.ticket_id or 0], r.recipient, r.payload["text"])
        for r in await outbox_rows(sessions)
    )
    await engine.dispose()
    return sent, queued, looks


async def test_planning_in_sets_sends_what_planning_one_by_one_would(
    database_url: str, twin_url: str
) -> None:
    """The same desk, the same three weeks: planned in sets whenever there is anything to
    plan, or ticket by ticket. The same reminders, escalations, nudges and expiries go out
    at the same passes with the same words; a ticket planned in sets is never looked at
    later than one by one would (earlier only while it waits: its expiry's lower bound)."""
    in_sets = await desk_timeline(database_url, in_sets_from=1)
    one_by_one = await desk_timeline(twin_url, in_sets_from=10**9)
    assert in_sets[0] == one_by_one[0]
    assert in_sets[1] == one_by_one[1]
    kinds = {row[1] for row in in_sets[0]}
    assert kinds == {"before", "overdue", "requester_nudge", "verify_nudge", "expire"}
    earlier = 0
    for step, (set_looks, exact_looks) in enumerate(zip(in_sets[2], one_by_one[2], strict=True)):
        for ticket, (set_look, exact) in enumerate(zip(set_looks, exact_looks, strict=True)):
            assert set_look is not None and exact is not None, (step, ticket)
            assert set_look <= exact, (step, ticket)
            earlier += set_look < exact
    assert 0 < earlier < len(in_sets[2])  # the waiting tickets' lower bounds, briefly


async def test_a_plan_in_sets_never_overwrites_a_change_made_while_it_ran(
    postgres_url: str,
) -> None:
    """A desk action that changes a ticket's status while its tenant is planned again in
    sets: the planning statement waits for the ticket's clock row, and once the action
    commits leaves it unplanned (the trigger's doing) instead of writing the plan it
    made from the old status."""
    engine = create_engine(postgres_url, pool_size=3)
    sessions = session_factory(engine)
    try:
        moved, other = [
            await file_ticket(sessions, PK, received=OPEN_SINCE, due_at=THU) for _ in range(2)
        ]
        job = ReminderPass(sessions, Tenants([PK]), now=Clock(OPEN_SINCE), in_sets_from=1)
        desk = sessions()
        async with desk.begin():
            ticket = await desk.get(Ticket, moved)
            assert ticket is not None
            ticket.status = TicketStatus.AWAITING_REQUESTER
            await tickets.add_event(
                desk, ticket, actor="staff:21", kind="status", at=OPEN_SINCE,
                data={"status": "awaiting_requester"},
            )  # fmt: skip
            await desk.flush()  # the clock row is now the desk's until it commits

            async def replan() -> int | None:
                report = PassReport()
                async with transaction(sessions) as session:
                    scope = store.Scope((PK.slug,))
                    ran = await job.plan_in_sets(session, scope, OPEN_SINCE, report)
                return report.planned if ran else None

            planning = asyncio.create_task(replan())
            async with engine.connect() as watch:  # until the planning waits for the row
                for _ in range(200):
                    waiting = await watch.scalar(
                        sa.text(  # for the desk's transaction to end
                            "SELECT count(*) FROM pg_locks "
                            "WHERE locktype = 'transactionid' AND NOT granted"
                        )
                    )
                    if waiting:
                        break
                    await asyncio.sleep(0.05)
                assert waiting == 1, "the planning never waited for the desk's row"
        assert await planning == 1  # the other ticket; the changed one is left to the pass
        assert await next_look(sessions, moved) is None
        assert await next_look(sessions, other) == utc(2026, 3, 9, 18, 59, 59)
        await desk.close()
    finally:
        await engine.dispose()


MINUTES = st.integers(min_value=-60 * 24 * 40, max_value=60 * 24 * 40)


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from(
        [TicketStatus.OPEN, TicketStatus.IN_PROGRESS, TicketStatus.AWAITING_REQUESTER]
    ),
    tenant=st.sampled_from([PK, SA, SECONDS]),
    set_minutes=MINUTES,
    now_minutes=MINUTES,
)
def test_a_groups_pieces_plan_each_of_its_tickets_as_it_alone(
    status: TicketStatus, tenant: Tenant, set_minutes: int, now_minutes: int
) -> None:
    """Whenever its deadline was set, a ticket of a group falls in exactly one piece, and
    that piece says what planning the ticket alone says of its deadline: the reminder or
    escalation due now, and the next look."""
    set_at = THU + timedelta(minutes=set_minutes)
    now = THU + timedelta(minutes=now_minutes)
    pieces = plan_group(store.Group(tenant.slug, status, THU), tenant, now, LATE_AFTER)
    (piece,) = [
        p
        for p in pieces
        if (p.set_after is None or set_at > p.set_after)
        and (p.set_upto is None or set_at <= p.set_upto)
    ]
    alone = deadline_plan(Facts(status, THU, set_at, status_since=now), tenant, now)
    assert piece.next_at == (alone.next_at or store.NEVER)
    assert piece.reminder == next(((str(d.kind), d.slot, d.at) for d in alone.due), None)
    waits = status is TicketStatus.AWAITING_REQUESTER
    assert (piece.nudge_at, piece.expires_from) == ((timedelta(hours=23) if waits else None), None)


@settings(max_examples=300, deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
    ),
    wait=st.sampled_from(["12 hours", "3 days", "5 business days", "1 month", "2 months"]),
    country=st.sampled_from(
        [("PK", "Asia/Karachi"), ("SA", "Asia/Riyadh"), ("GB", "Europe/London")]
    ),
)
def test_no_expiry_comes_sooner_than_its_shortest_span(
    start: datetime, wait: str, country: tuple[str, str]
) -> None:
    """Planning in sets looks at a waiting ticket no later than this: it must never be
    after the expiry itself, whatever the start, calendar or daylight saving."""
    duration = parse_duration(wait)
    expires = add_duration(start, duration, calendar_of(*country))
    assert start + shortest(duration) <= expires


_TEMPLATE = "HX" + "b2" * 16
_NUMBER = "whatsapp:+14155230001"
_NO_NUMBER = "no WhatsApp number to write from"
_CLOSED = "WhatsApp window closed, no template; not sent"


@pytest.mark.parametrize(
    ("channel", "numbers", "templates", "wrote_ago", "expected"),
    [
        ("telegram", [], {}, None, _Route()),  # Telegram has no window and no number
        ("whatsapp", [], {}, timedelta(hours=1), _Route(refused=_NO_NUMBER)),
        ("whatsapp", ["+14155230001"], {}, timedelta(hours=1), _Route(_NUMBER)),
        ("whatsapp", ["+14155230001"], {}, None, _Route(_NUMBER)),  # never wrote: not held
        ("whatsapp", ["+14155230001"], {}, timedelta(hours=25), _Route(_NUMBER, refused=_CLOSED)),
        (
            "whatsapp", ["+14155230001"], {"update": _TEMPLATE}, timedelta(hours=25),
            _Route(_NUMBER, hold=True),
        ),
    ],
)  # fmt: skip
def test_how_a_message_reaches_a_requester(
    channel: str,
    numbers: list[str],
    templates: dict[str, str],
    wrote_ago: timedelta | None,
    expected: _Route,
) -> None:
    """`_route`, the one decision `tell_customer` and the bulk nudges share: as it is, held
    for WhatsApp's 24-hour window, or refused (and why)."""
    tenant = policy(channels={"whatsapp_numbers": numbers}, whatsapp_templates=templates)
    last = store.LastContact(None if wrote_ago is None else NOW - wrote_ago, None)
    route = _route(channel, tenant, last, NOW)
    assert route == expected
    assert route.at_once == (not expected.hold and expected.refused is None)
