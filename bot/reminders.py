"""What is due when: staff reminders, overdue escalations, customer nudges and expiries.

Nothing here keeps state between passes. Reminders are derived from each ticket (its
status, deadline and history) and the tenant's `[reminders]` policy every time the clock
looks at it; a reminder counts as sent once its row exists in `reminder_sent`, a row that
one transaction inserts together with the outbox message it causes. Its unique key is
(ticket, kind, deadline, slot), so a second scheduler, a restart or a replay all find the
row and send nothing, and a moved deadline has new keys: reminders of the old one are
simply never due again.

Which reminder is due at `now` (`plan`):
- before the deadline: the latest `before` offset whose time has come (earlier ones it
  supersedes are never sent afterwards); offsets that fall before the deadline was set
  (the clock started, or an extension moved it) do not apply;
- once the deadline has passed: escalation number k = the latest of the occurrences at
  due, due + every, due + 2*every, … that has come;
- awaiting verification or an answer from the requester: one nudge 23 hours after the
  ticket began to wait (while WhatsApp's 24-hour window is open), and an unverified
  ticket expires after `unverified_expire_after`;
- anything found more than `late_after` past its time (the desk was down) is sent once,
  marked "(late)".
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import logging
from calendar import monthrange
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import cache, lru_cache
from typing import Any, NamedTuple

from babel.dates import format_date, format_time
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import window
from bot.clock import BusinessCalendar, Duration, Unit, add_duration, time_left
from bot.i18n import LANGUAGES, _, translate
from bot.tenants import Tenant, Tenants
from storage import outbox
from storage import reminders as store
from storage.db import SessionFactory, transaction
from storage.enums import CLOSED_STATUSES, Channel, TicketStatus
from storage.history import Summary, summarize
from storage.models import Ticket, TicketEvent, utcnow
from storage.tickets import add_event, events_of

log = logging.getLogger(__name__)

AnyTicket = Ticket | store.DueTicket  # the ORM row, or the plain copy a pass plans from

LATE_AFTER = timedelta(minutes=2)  # found later than this after its time: marked "(late)"
NUDGE_AFTER = timedelta(hours=23)  # still inside WhatsApp's 24-hour customer-service window
WINDOW = timedelta(hours=24)
RETRY_AFTER = timedelta(minutes=5)  # a ticket whose handling failed is looked at again then
MAX_ROUNDS = 1000  # batches per pass: a bound, never reached in practice
# More reminders than this for one chat in one batch go as one digest: a burst (after
# downtime, a bulk import) of thousands would queue behind each other at Telegram's
# 20 a minute to a group, and every message for that chat after them, for hours
DIGEST_ABOVE = 10
DIGEST_LINES = 25  # tickets a digest names (Telegram: 4,096 characters a message)
PLANNING = 1  # raise when `plan` decides differently: every open ticket is planned anew

VERIFY_NUDGE = _(
    "Your request {ref} is still waiting for us to confirm who you are. Please reply here to "
    "continue, or send cancel to stop it. Without a reply it will be closed on {date}."
)
REQUESTER_NUDGE = _(
    "Your request {ref} is on hold until you answer our last message. Please reply here so "
    "that we can continue."
)
EXPIRED_NOTICE = _(
    "We could not confirm who you are, so request {ref} has been closed. You can make a new "
    "request here at any time."
)


class ReminderKind(StrEnum):
    BEFORE = "before"  # staff: the deadline is coming
    OVERDUE = "overdue"  # admins: the deadline has passed
    VERIFY_NUDGE = "verify_nudge"  # customer: please finish verifying
    REQUESTER_NUDGE = "requester_nudge"  # customer: we are waiting for your answer
    EXPIRE = "expire"  # unverified for too long: the ticket closes


_KINDS = {str(kind): kind for kind in ReminderKind}


# --- durations on the tenant's calendar -----------------------------------------------


@cache
def calendar_of(country: str, timezone: str) -> BusinessCalendar:
    """One calendar per (country, zone), shared by every pass (holiday years are cached)."""
    return BusinessCalendar(country, timezone)


def tenant_calendar(tenant: Tenant) -> BusinessCalendar:
    return calendar_of(tenant.calendar, tenant.timezone)


_ELAPSED = {
    Unit.SECONDS: timedelta(seconds=1),
    Unit.MINUTES: timedelta(minutes=1),
    Unit.HOURS: timedelta(hours=1),
}


def _months(day: date, months: int) -> date:
    """Same day-of-month `months` later (or earlier), or that month's last day."""
    year, month0 = divmod(day.month - 1 + months, 12)
    year += day.year
    return date(year, month0 + 1, min(day.day, monthrange(year, month0 + 1)[1]))


def shift(moment: datetime, amount: int, unit: Unit, calendar: BusinessCalendar) -> datetime:
    """`moment` moved by `amount` units (negative: back), keeping the local time of day.

    Seconds to hours are real elapsed time. Days, business days and months move the local
    date (business days skip weekends and public holidays, as `BusinessCalendar` does) and
    keep the wall-clock time: "1 business day before" Monday 23:59:59 is the previous
    Friday 23:59:59 in a Sat-Sun country, with one working day then left.
    """
    if unit is Unit.IMMEDIATE or amount == 0:
        return moment
    if unit in _ELAPSED:
        return moment + _ELAPSED[unit] * amount
    return _shift_days(moment.astimezone(UTC), amount, unit, calendar)


@lru_cache(maxsize=1 << 14)  # ≈ 4 MB when full
def _shift_days(moment: datetime, amount: int, unit: Unit, calendar: BusinessCalendar) -> datetime:
    """`shift` on the calendar, remembered: deadlines end their local day, so the tickets
    of a pass share a few thousand of them, each moved by the same few offsets."""
    local = moment.astimezone(calendar.tz)
    day = local.date()
    if unit is Unit.DAYS:
        day += timedelta(days=amount)
    elif unit is Unit.BUSINESS_DAYS:
        day = calendar.add_business_days(day, amount)
    else:
        day = _months(day, amount)
    wall = datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=calendar.tz)
    return wall.astimezone(UTC)


def before(due: datetime, offset: Duration, calendar: BusinessCalendar) -> datetime:
    """When the reminder `offset` before `due` is due."""
    return shift(due, -offset.amount, offset.unit, calendar)


@lru_cache(maxsize=1 << 14)
def before_times(
    due: datetime, offsets: tuple[Duration, ...], calendar: BusinessCalendar
) -> tuple[tuple[datetime, str], ...]:
    """(when, slot) of each reminder `offsets` before `due`, remembered: the tickets of a
    pass share their deadlines (most end a local day) and their tenant's offsets."""
    return tuple((before(due, offset, calendar), str(offset)) for offset in offsets)


def occurrence(due: datetime, every: Duration, k: int, calendar: BusinessCalendar) -> datetime:
    """The time of escalation number `k` (0 at the deadline itself)."""
    return shift(due, every.amount * k, every.unit, calendar)


_SHORTEST_STEP = {
    Unit.DAYS: timedelta(hours=23),  # a day that loses an hour to DST
    Unit.BUSINESS_DAYS: timedelta(hours=23),
    Unit.MONTHS: timedelta(days=28) - timedelta(hours=1),
}


def latest_occurrence(
    due: datetime, every: Duration, now: datetime, calendar: BusinessCalendar
) -> int:
    """The largest k with occurrence(k) <= now (now >= due): arithmetic or a binary search."""
    elapsed = now - due
    if every.unit in _ELAPSED:
        return int(elapsed // (_ELAPSED[every.unit] * every.amount))
    low, high = 0, int(elapsed // (_SHORTEST_STEP[every.unit] * every.amount)) + 1
    while low < high:  # occurrence(low) <= now < occurrence(high + 1) narrows to one k
        middle = (low + high + 1) // 2
        if occurrence(due, every, middle, calendar) <= now:
            low = middle
        else:
            high = middle - 1
    return low


# --- planning (pure) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """What planning needs to know about one ticket, read from its row and its history."""

    status: TicketStatus
    due_at: datetime | None
    deadline_set_at: datetime  # reminders timed before this belong to no deadline of ours
    status_since: datetime  # when the ticket entered its current status


@dataclass(frozen=True, slots=True)
class Due:
    """One reminder that should go out now; (kind, anchor, slot) is its identity."""

    kind: ReminderKind
    anchor: datetime
    slot: str
    at: datetime
    late: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    due: tuple[Due, ...]
    next_at: datetime | None  # strictly after `now`; None: nothing more unless it changes


def _status(value: str) -> TicketStatus:
    try:
        return TicketStatus(value)
    except ValueError:
        return TicketStatus.OPEN


def facts_from(ticket: AnyTicket, summary: Summary) -> Facts:
    """The planning facts of a ticket from its row and its history's `Summary`: it has
    been in its status since that status's run in the history began (since its last
    change otherwise), and its deadline was set when the clock started or the latest
    event that set one, whichever is later."""
    status = _status(ticket.status)
    deadline_set_at = ticket.clock_started_at or ticket.received_at
    if summary.due_set_at is not None and summary.due_set_at > deadline_set_at:
        deadline_set_at = summary.due_set_at
    since = summary.status_at if summary.status == status else None
    return Facts(status, ticket.due_at, deadline_set_at, since or ticket.updated_at)


def facts_of_row(ticket: store.ToPlan) -> Facts:
    """The planning facts the database worked out from the row and its summary."""
    return Facts(_status(ticket.status), ticket.due_at, ticket.deadline_set_at, ticket.status_since)


def plan(
    facts: Facts,
    tenant: Tenant,
    now: datetime,
    *,
    late_after: timedelta = LATE_AFTER,
    calendar: BusinessCalendar | None = None,
) -> Plan:
    """Which reminders of this ticket are due at `now`, and when to look again."""
    if facts.status in CLOSED_STATUSES:
        return Plan((), None)
    calendar = calendar or tenant_calendar(tenant)
    due: list[Due] = []
    later: list[datetime] = []

    if facts.status is TicketStatus.AWAITING_VERIFICATION:
        expires = add_duration(facts.status_since, tenant.unverified_expire_after, calendar)
        if now >= expires:
            late = now - expires > late_after
            return Plan((Due(ReminderKind.EXPIRE, facts.status_since, "", expires, late),), None)
        later.append(expires)
        _nudge(ReminderKind.VERIFY_NUDGE, facts, now, expires, due, later)
    elif facts.status is TicketStatus.AWAITING_REQUESTER:
        _nudge(ReminderKind.REQUESTER_NUDGE, facts, now, None, due, later)
    deadline = deadline_plan(facts, tenant, now, late_after=late_after, calendar=calendar)
    due.extend(deadline.due)
    if deadline.next_at is not None:
        later.append(deadline.next_at)
    upcoming = [at for at in later if at > now]
    return Plan(tuple(due), min(upcoming) if upcoming else None)


def deadline_plan(
    facts: Facts,
    tenant: Tenant,
    now: datetime,
    *,
    late_after: timedelta = LATE_AFTER,
    calendar: BusinessCalendar | None = None,
) -> Plan:
    """The part of `plan` that follows the deadline: the reminder before it or the
    escalation after it that is due now (at most one), and the next of them.

    It reads the status (closed, or paused while awaiting the requester), the deadline and
    when it was set, never `status_since`: tickets that share those share this part."""
    paused = (
        facts.status is TicketStatus.AWAITING_REQUESTER and tenant.pause_while_awaiting_requester
    )
    if facts.status in CLOSED_STATUSES or facts.due_at is None or paused:
        return Plan((), None)
    calendar = calendar or tenant_calendar(tenant)
    deadline = facts.due_at
    if now >= deadline:
        every = tenant.reminders.overdue_every
        k = latest_occurrence(deadline, every, now, calendar)
        at = occurrence(deadline, every, k, calendar)
        escalation = Due(ReminderKind.OVERDUE, deadline, str(k), at, late=now - at > late_after)
        return Plan((escalation,), occurrence(deadline, every, k + 1, calendar))
    latest: tuple[datetime, str] | None = None  # the reminder due now, if any
    later = [deadline]
    for item in before_times(deadline, tenant.reminders.before, calendar):
        if item[0] < facts.deadline_set_at:
            continue  # timed before this deadline was set: not one of its reminders
        if item[0] > now:
            later.append(item[0])
        elif latest is None or item > latest:
            latest = item
    if latest is None:
        return Plan((), min(later))
    reminder = Due(
        ReminderKind.BEFORE, deadline, latest[1], latest[0], now - latest[0] > late_after
    )
    return Plan((reminder,), min(later))


def _nudge(
    kind: ReminderKind,
    facts: Facts,
    now: datetime,
    expires: datetime | None,
    due: list[Due],
    later: list[datetime],
) -> None:
    """One nudge 23 hours into the wait, unless the window closed or the ticket expires first."""
    at = facts.status_since + NUDGE_AFTER
    if expires is not None and at >= expires:
        return
    if now < at:
        later.append(at)
    elif now < facts.status_since + WINDOW:
        due.append(Due(kind, facts.status_since, "", at, late=False))


def plan_group(
    group: store.Group, tenant: Tenant, now: datetime, late_after: timedelta
) -> list[store.Piece]:
    """`plan` for every ticket of `group` at once, as pieces the database applies to each
    ticket (`store.plan_groups`).

    The deadline part (`deadline_plan`) depends on when the deadline was set only through
    which of the reminders before it were timed after that: one piece per span between
    their times, planned for the latest moment of the span (none of them for a deadline
    set after the last). The waiting part comes from each ticket's own `status_since`: the
    nudge at its exact time; the expiry no earlier than its shortest possible span (a
    look then plans that ticket on its own, with its exact expiry)."""
    status = _status(group.status)
    waiting: dict[str, timedelta] = {}
    if status in (TicketStatus.AWAITING_VERIFICATION, TicketStatus.AWAITING_REQUESTER):
        waiting = {"nudge_at": NUDGE_AFTER, "nudge_until": WINDOW}
    if status is TicketStatus.AWAITING_VERIFICATION:
        waiting["expires_from"] = shortest(tenant.unverified_expire_after)
    calendar = tenant_calendar(tenant)
    times: list[datetime] = []
    if group.due_at is not None and now < group.due_at:
        times = sorted(
            {at for at, _slot in before_times(group.due_at, tenant.reminders.before, calendar)}
        )
    spans = list(zip([None, *times], [*times, None], strict=True))
    found: list[store.Piece] = []
    for after, upto in spans:
        set_at = upto if upto is not None else (after or now) + timedelta(microseconds=1)
        part = deadline_plan(
            Facts(status, group.due_at, set_at, now),
            tenant,
            now,
            late_after=late_after,
            calendar=calendar,
        )
        reminder, late = None, False
        if part.due:
            (due,) = part.due  # a deadline has at most one reminder or escalation due at once
            reminder, late = (str(due.kind), due.slot, due.at), due.late
        next_at = part.next_at or store.NEVER
        piece = store.Piece(group, after, upto, next_at, reminder, late, **waiting)
        last = found[-1] if found else None
        if last and (last.next_at, last.reminder, last.late) == (next_at, reminder, late):
            piece = dataclasses.replace(found.pop(), set_upto=upto)  # the same plan: one span
        found.append(piece)
    return found


def shortest(duration: Duration) -> timedelta:
    """A span no clock of `duration` can run out before, whatever its start."""
    if duration.unit is Unit.IMMEDIATE:
        return timedelta(0)
    if duration.unit in _ELAPSED:
        return _ELAPSED[duration.unit] * duration.amount
    return _SHORTEST_STEP[duration.unit] * duration.amount


def policy_fingerprint(tenant: Tenant) -> str:
    """What planning reads from a tenant's policy, hashed: a planned next look stays right
    for exactly as long as this does not change."""
    read = tenant.model_dump(
        mode="json",
        include={
            "timezone",
            "calendar",
            "unverified_expire_after",
            "pause_while_awaiting_requester",
            "reminders",
        },
    )
    text = json.dumps([PLANNING, read], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --- words -----------------------------------------------------------------------------


def describe(span: timedelta) -> str:
    """'2 days 4 hours', '85 seconds': the two largest units of a span, for staff."""
    seconds = round(abs(span).total_seconds())
    if seconds >= 3600:
        seconds = round(seconds / 60) * 60  # 2 days 23:59:59 reads as 3 days
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    return " ".join(parts[:2]) or "0 seconds"


def staff_time(moment: datetime, tenant: Tenant) -> str:
    local = moment.astimezone(tenant.zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def customer_date(moment: datetime, tenant: Tenant, language: str) -> str:
    """A deadline as the customer reads it: the long local date, and the time unless the
    deadline is the end of that day."""
    local = moment.astimezone(tenant.zone)
    text = format_date(local.date(), "long", locale=language)
    if local.time().replace(microsecond=0) != time(23, 59, 59):
        text += " " + format_time(local.time(), "short", locale=language)
    return text


def customer_language(ticket: AnyTicket, tenant: Tenant) -> str:
    if ticket.language in LANGUAGES and ticket.language in tenant.languages:
        return ticket.language
    return tenant.default_language


def _kind_name(kind: str) -> str:
    return kind.replace("_", " ")


def staff_text(ticket: AnyTicket, tenant: Tenant, item: Due, now: datetime) -> str:
    """The reminder or escalation as staff read it: which ticket, what is asked, time left."""
    assert ticket.due_at is not None
    late = " (late)" if item.late else ""
    who = f"Assigned to {ticket.assignee_name}." if ticket.assignee_name else "Not claimed yet."
    what = f"{ticket.ref} ({_kind_name(ticket.kind)})"
    left = time_left(ticket.due_at, now)
    if item.kind is ReminderKind.BEFORE:
        working = f" ({item.slot} left)" if "business" in item.slot else ""
        return (
            f"⏰ Reminder{late}: {what} is due in {describe(left)}{working}, "
            f"at {staff_time(ticket.due_at, tenant)}. {who}"
        )
    return (
        f"🚨 Overdue{late}: {what} was due at {staff_time(ticket.due_at, tenant)}, "
        f"{describe(left)} ago. {who}"
    )


def digest_line(ticket: AnyTicket, tenant: Tenant, item: Due, now: datetime) -> str:
    """One ticket of a digest: which, what is asked, when it is or was due, who has it."""
    assert ticket.due_at is not None
    left = time_left(ticket.due_at, now)
    when = staff_time(ticket.due_at, tenant)
    due = f"overdue since {when}" if left < timedelta(0) else f"due in {describe(left)}, {when}"
    who = ticket.assignee_name or "not claimed yet"
    return f"• {ticket.ref} ({_kind_name(ticket.kind)}): {due}; {who}"


class StaffReminder(NamedTuple):
    """A staff reminder or escalation, claimed and about to be queued: whose ticket, who
    has it (where a reminder before the deadline goes), and the reminder itself. A tuple,
    not a `Due`: a catch-up makes tens of thousands, and reads `kind` and `anchor` of most."""

    ticket_id: int
    assignee_user_id: int | None
    tenant: Tenant
    kind: ReminderKind
    anchor: datetime  # the ticket's deadline
    slot: str
    at: datetime
    late: bool

    @classmethod
    def of(cls, ticket_id: int, assignee: int | None, tenant: Tenant, due: Due) -> StaffReminder:
        return cls(ticket_id, assignee, tenant, due.kind, due.anchor, due.slot, due.at, due.late)

    @property
    def due(self) -> Due:
        return Due(self.kind, self.anchor, self.slot, self.at, self.late)


async def staff_queue(
    session: AsyncSession,
    reminders: list[StaffReminder],
    now: datetime,
    known: Mapping[int, store.DueTicket] | None = None,
) -> list[store.Message]:
    """The staff messages of reminders claimed together: one per reminder and recipient,
    except that a chat that would get more than `DIGEST_ABOVE` gets one digest instead
    (how many, the first `DIGEST_LINES` by deadline, `/overdue` and `/tickets` for the
    rest). Only the tickets a message names are read (those not `known` already), and
    only what is sent is written out: a burst's single messages, or a digest's unnamed
    lines, are not."""
    # reminders that share tenant, kind and assignee share their recipients
    alike: dict[tuple[str, ReminderKind, int | None], list[StaffReminder]] = {}
    for reminder in reminders:
        key = (reminder.tenant.slug, reminder.kind, reminder.assignee_user_id)
        alike.setdefault(key, []).append(reminder)
    recipients = {
        key: staff_recipients(items[0], items[0].tenant, key[1]) for key, items in alike.items()
    }
    by_chat: dict[tuple[str, int], list[StaffReminder]] = {}
    for key, items in alike.items():
        for chat in recipients[key]:
            by_chat.setdefault((key[0], chat), []).extend(items)
    bursts = {key: items for key, items in by_chat.items() if len(items) > DIGEST_ABOVE}
    skip: dict[str, frozenset[int]] = {}  # each tenant's chats that get a digest
    for slug, chat in bursts:
        skip[slug] = skip.get(slug, _NONE) | {chat}
    singly = {  # what some recipient gets on its own (or no recipient at all: logged)
        key
        for key, chats in recipients.items()
        if not chats or any(chat not in skip.get(key[0], _NONE) for chat in chats)
    }
    alone = [r for r in reminders if (r.tenant.slug, r.kind, r.assignee_user_id) in singly]
    first = {  # what each digest names: its earliest deadlines
        key: heapq.nsmallest(DIGEST_LINES, items, key=_deadline_order)
        for key, items in bursts.items()
    }
    named = {r.ticket_id for r in alone}
    named.update(r.ticket_id for items in first.values() for r in items)
    rows = dict(known or {})  # tickets the caller has read already
    rows.update(await store.full_tickets(session, sorted(named.difference(rows))))
    messages: list[store.Message] = []
    for r in alone:
        skipped = skip.get(r.tenant.slug, _NONE)
        messages.extend(staff_messages(rows[r.ticket_id], r.tenant, r.due, now, skip=skipped))
    for (slug, chat), items in bursts.items():
        messages.append(_digest(slug, chat, items, first[slug, chat], rows, now))
    return messages


def _deadline_order(reminder: StaffReminder) -> tuple[datetime, int]:
    """Earliest deadline first (a staff reminder's anchor is its ticket's deadline)."""
    return reminder.anchor, reminder.ticket_id


def _digest(
    slug: str,
    chat: int,
    items: list[StaffReminder],
    first: list[StaffReminder],
    rows: dict[int, store.DueTicket],
    now: datetime,
) -> store.Message:
    """One message for a burst of reminders to `chat`, naming the `first` by deadline; its
    key is the earliest's, which no other message to `chat` ever carries."""
    overdue = sum(r.kind is ReminderKind.OVERDUE for r in items)
    lines = [
        f"⏰ {len(items)} reminders at once: {overdue} overdue, "
        f"{len(items) - overdue} due soon. Earliest deadline first:",
        *(digest_line(rows[r.ticket_id], r.tenant, r.due, now) for r in first),
    ]
    if len(items) > len(first):
        lines.append(f"…and {len(items) - len(first)} more: /overdue and /tickets list them.")
    return store.Message(
        channel=Channel.TELEGRAM,
        recipient=str(chat),
        payload={"text": "\n".join(lines)},
        tenant=slug,
        ticket_id=None,  # several tickets
        dedupe_key="clock:digest" + _key(first[0].ticket_id, first[0].due, chat)[len("clock") :],
    )


# --- the pass --------------------------------------------------------------------------

STAFF_KINDS = frozenset({ReminderKind.BEFORE, ReminderKind.OVERDUE})
NUDGES = frozenset({ReminderKind.VERIFY_NUDGE, ReminderKind.REQUESTER_NUDGE})


@dataclass
class PassReport:
    planned: int = 0  # next looks written in sets (staff reminders due claimed with them)
    looked_at: int = 0  # looked at one by one: left due by the sets, or not plannable in sets
    sent: int = 0
    already_sent: int = 0
    failed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    # the pass took its slice (`ReminderPass.slice`) of more tickets to look at: the next
    # one goes on from there
    more: bool = False

    def count_sent(self, kind: str) -> None:
        self.sent += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def add(self, other: PassReport) -> None:
        self.planned += other.planned
        self.looked_at += other.looked_at
        self.sent += other.sent
        self.already_sent += other.already_sent
        self.failed += other.failed
        for kind, count in other.by_kind.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0) + count


@dataclass(frozen=True, slots=True)
class _Planned:
    """A ticket with reminders due now, and what planning said."""

    ticket_id: int
    tenant: Tenant
    todo: Plan


@dataclass(frozen=True, slots=True)
class _InBulk:
    """A ticket whose reminders due now go to staff, or nudge a customer who can be written
    to now: claimed and queued with its batch."""

    ticket: store.ToPlan
    tenant: Tenant
    todo: Plan
    row: store.DueTicket | None  # a nudge's: the ticket's columns,
    contact: store.Contact | None  # and where its customer talks to the bot


@dataclass
class ReminderPass:
    """One look at every ticket whose time has come: claim, send, plan the next look.

    Many unplanned or due tickets (`in_sets_from`) are first planned in sets
    (`plan_in_sets`), and the reminders to staff those plans have due now are claimed and
    queued with them, one digest per chat. The rest are taken in batches, each batch in
    one transaction with its rows locked (SKIP LOCKED on PostgreSQL). The database works
    out each ticket's planning facts from its row (`store.ToPlan`, no history read) and
    the whole batch is planned in Python first; one read then drops the reminders already
    sent (after a policy change, most of what is due). Reminders and escalations to staff,
    and nudges to customers who can be written to now, are claimed with one INSERT and
    queued with another for the batch (only the tickets a message names are read in
    full); every ticket's next look is one UPDATE. A ticket that changes its own row
    (expiry, a stopped clock), whose nudge must wait for WhatsApp's window, or that belongs
    to a batch whose bulk statements failed is handled alone inside a savepoint: one
    broken ticket is logged and retried later without holding back the others.
    """

    sessions: SessionFactory
    tenants: Tenants
    now: Callable[[], datetime] = utcnow
    # On SQLite a batch holds the main file's write lock (webhooks write to their journal
    # meanwhile): ≈ 15 ms when it only plans, 35–110 ms when most of it sends; 1,000 a
    # batch was 5–15 % faster but raised `serve`'s peak memory by 16 MB (bench/README.md)
    batch: int = 500
    # Fewer tickets to plan than this are planned in the batches, one by one: planning in
    # sets costs a scratch table and a few more statements, worth it for many (a bulk
    # import, an upgrade, a policy change). Not for the new tickets of 15 seconds at 200
    # messages/s (≈ 225): on PostgreSQL the webhooks' p99 was 41–71 ms with 200 here,
    # 28 ms planning those one by one (bench/README.md, session 11)
    in_sets_from: int = 2_000
    # A pass looks at the first this many tickets it has to (in id order) and leaves the
    # rest to the next one, which `Clock.tick` runs at once: a bulk catch-up (the first
    # start over a bulk import, a day without the clock) goes in passes of ≈ 0.3-0.6 s at
    # a million tickets rather than one of 2-3 s, each its own transaction, so that the
    # webhooks' and workers' writes go between them (bench/README.md, session 15)
    slice: int = 20_000
    late_after: timedelta = LATE_AFTER
    _policies_adopted: bool = field(default=False, init=False, repr=False)
    # while a change of policy is adopted a slice a pass: the tenants whose policies
    # changed, and the id the last slice ended at (`adopt_policies`)
    _adopting: tuple[list[Tenant], int] | None = field(default=None, init=False, repr=False)

    async def run(self) -> PassReport:
        """Act on what is due at this moment, up to `slice` tickets; returns what was done
        (`more`: what is left for the next pass)."""
        now = self.now()
        report = PassReport()
        if not self._policies_adopted:
            await self.adopt_policies(now, report)
            if report.more or report.planned:
                # planning tickets again was this pass's work; the regular pass follows
                # at once (`Clock.tick`)
                report.more = True
                return report
        async with transaction(self.sessions) as session:
            up_to = await store.slice_end(session, store.Scope(due=now), self.slice)
            await self.plan_in_sets(session, store.Scope(due=now, up_to=up_to), now, report)
        for _round in range(MAX_ROUNDS):
            async with transaction(self.sessions) as session:
                tickets = await store.due_tickets(session, now=now, limit=self.batch, up_to=up_to)
                await self._batch(session, tickets, now, report)
            report.looked_at += len(tickets)
            if not tickets:  # a short batch may only have passed over tickets held elsewhere
                break
        report.more = up_to is not None
        if report.sent or report.failed:
            log.info(
                "clock pass: %d tickets, %d sent, %d already sent, %d failed",
                report.looked_at,
                report.sent,
                report.already_sent,
                report.failed,
            )
        return report

    async def plan_in_sets(
        self, session: AsyncSession, scope: store.Scope, now: datetime, report: PassReport
    ) -> bool:
        """Plan the tickets of `scope` by groups that share a plan (`plan_group`), in one
        UPDATE, after claiming the staff reminders those plans have due now in one INSERT
        and queueing them (`staff_queue`); whether it ran (False: too few tickets to be
        worth it, or it failed, and it wrote nothing). What it leaves (tenants not loaded
        or whose deadlines move while tickets wait, rows older than migration 0014, what
        goes to customers or may expire) is looked at now or later ticket by ticket."""
        if await store.count(session, scope, at_most=self.in_sets_from) < self.in_sets_from:
            return False
        found: list[store.Piece] = []
        done = PassReport()
        await store.hold_in_sets(session)
        try:
            async with session.begin_nested():
                for group in await store.groups(session, scope):
                    if group.tenant not in self.tenants:
                        continue
                    tenant = self.tenants.by_slug(group.tenant)
                    if not tenant.pause_while_awaiting_requester:
                        found.extend(plan_group(group, tenant, now, self.late_after))
                planned = await store.plan_groups(session, scope, found, now=now, claim=True)
                reminders = self._claimed(planned.claimed)
                await store.queue(session, await staff_queue(session, reminders, now))
        except Exception as error:  # the ticket-at-a-time pass plans them all the same, slower
            log.error(  # its message quotes the rows (texts, names): the type only
                "clock: planning in sets failed (%d pieces, %s)", len(found), type(error).__name__
            )
            return False
        done.planned = planned.written
        for reminder in reminders:
            done.count_sent(reminder.kind)
        report.add(done)
        return True

    def _claimed(self, claimed: list[store.Claim]) -> list[StaffReminder]:
        tenants = {slug: self.tenants.by_slug(slug) for slug in {c.tenant for c in claimed}}
        return [
            StaffReminder(
                c.ticket_id,
                c.assignee_user_id,
                tenants[c.tenant],
                _KINDS[c.kind],
                c.anchor_at,
                c.slot,
                c.due_at,
                c.late,
            )
            for c in claimed
        ]

    async def adopt_policies(self, now: datetime, report: PassReport | None = None) -> None:
        """Before this process's regular passes: the open tickets of the tenants whose
        reminder policies are not the ones they were planned under are planned again, in
        sets (what is due sent, into `report`), a slice (`slice`) a call in id order, and
        `report.more` says when slices are left; or they are left to the pass to plan one
        by one. The new policies are recorded with the last slice: a process that stops
        before then starts over, and planning again only writes what changes (a reminder
        is claimed once whoever plans it)."""
        report = report if report is not None else PassReport()
        async with transaction(self.sessions) as session:
            changed, after = self._adopting or (await self._changed_policies(session), 0)
            # a tenant whose deadlines move while tickets wait is planned one by one
            in_sets = tuple(t.slug for t in changed if not t.pause_while_awaiting_requester)
            up_to = (
                await store.slice_end(session, store.Scope(in_sets, after=after), self.slice)
                if in_sets
                else None
            )
            before = report.planned
            ran = bool(in_sets) and await self.plan_in_sets(
                session, store.Scope(in_sets, after=after, up_to=up_to), now, report
            )
            done = not ran or up_to is None
            if done:
                left = None if ran else after  # in sets up to `after`; from there, unplanned
                await self._record_policies(session, changed, in_sets, left, now)
        if ran:
            log.info("clock: %d open tickets planned again in sets", report.planned - before)
        self._adopting = None if done else (changed, up_to or 0)
        self._policies_adopted = done
        report.more = report.more or not done

    async def _changed_policies(self, session: AsyncSession) -> list[Tenant]:
        return [
            tenant
            for tenant in self.tenants
            if await store.policy_changed(
                session, tenant=tenant.slug, fingerprint=policy_fingerprint(tenant)
            )
        ]

    async def _record_policies(
        self,
        session: AsyncSession,
        changed: list[Tenant],
        in_sets: tuple[str, ...],
        left_after: int | None,
        now: datetime,
    ) -> None:
        """Record the tenants' new policies. The open tickets that were not planned again in
        sets are unplanned for the passes to plan: those of `in_sets`' tenants with an id
        above `left_after` (None: all of them were), and all the other tenants'."""
        for tenant in changed:
            fingerprint = policy_fingerprint(tenant)
            await store.adopt_policy(session, tenant=tenant.slug, fingerprint=fingerprint, now=now)
            if tenant.slug in in_sets and left_after is None:
                log.info("clock: %s has a new reminder policy", tenant.slug)
                continue
            after = left_after if tenant.slug in in_sets and left_after else 0
            unplanned = await store.unplan(session, tenant.slug, after=after)
            log.info(
                "clock: %s has a new reminder policy; %d open tickets to plan again",
                tenant.slug,
                unplanned,
            )

    async def _batch(
        self, session: AsyncSession, tickets: list[store.ToPlan], now: datetime, report: PassReport
    ) -> None:
        """Plan every ticket of the batch, then write: staff reminders in bulk, the others
        one ticket at a time, and all the next looks that are not written yet at once."""
        quiet: dict[int, datetime] = {}
        planned: list[_Planned] = []  # tickets with reminders due, not yet known to be sent
        alone: list[int] = []
        older = await self._older_facts(session, tickets)
        for ticket in tickets:
            try:
                if ticket.tenant not in self.tenants:
                    log.warning("clock: ticket %s belongs to no loaded tenant; skipped", ticket.ref)
                    quiet[ticket.id] = store.NEVER
                    continue
                tenant = self.tenants.by_slug(ticket.tenant)
                if tenant.pause_while_awaiting_requester:  # its deadline may move: `_act`
                    alone.append(ticket.id)
                    continue
                facts = older[ticket.id][0] if ticket.id in older else facts_of_row(ticket)
                todo = plan(facts, tenant, now, late_after=self.late_after)
            except Exception as error:  # one broken ticket must not stop the others
                self._failed(ticket, error, now, report, quiet)
                continue
            if todo.due:
                planned.append(_Planned(ticket.id, tenant, todo))
            else:
                quiet[ticket.id] = todo.next_at or store.NEVER
        bulk: list[_Planned] = []
        for item in await self._not_sent_yet(session, planned, report):
            if not item.todo.due:
                quiet[item.ticket_id] = item.todo.next_at or store.NEVER
            elif all(due.kind in STAFF_KINDS or due.kind in NUDGES for due in item.todo.due):
                bulk.append(item)
            else:
                alone.append(item.ticket_id)  # `_alone` reads its ORM row itself
        by_id = {ticket.id: ticket for ticket in tickets}
        nudged = {i.ticket_id for i in bulk if any(d.kind in NUDGES for d in i.todo.due)}
        rows = await store.full_tickets(session, sorted(nudged))
        reach = await store.contacts(session, list(rows.values()))
        to_bulk: list[_InBulk] = []
        for item in bulk:
            row, contact = rows.get(item.ticket_id), reach.get(item.ticket_id)
            if item.ticket_id in nudged and (
                row is None or not _reachable(row, item.tenant, contact, now)
            ):
                alone.append(item.ticket_id)  # held for the window, or to be looked for
                continue
            to_bulk.append(_InBulk(by_id[item.ticket_id], item.tenant, item.todo, row, contact))
        if to_bulk:
            done = PassReport()
            try:
                async with session.begin_nested():
                    await self._in_bulk(session, to_bulk, now, done)
            except Exception as error:  # its message quotes the rows (texts, names): type only
                log.warning(
                    "clock: bulk reminders for %d tickets failed (%s); one ticket at a time",
                    len(to_bulk),
                    type(error).__name__,
                )
                alone.extend(item.ticket.id for item in to_bulk)
            else:
                report.add(done)
                quiet.update((item.ticket.id, item.todo.next_at or store.NEVER) for item in to_bulk)
        for ticket_id in sorted(alone):
            older.pop(ticket_id, None)  # `_act` keeps its summary itself
            await self._alone(session, by_id[ticket_id], now, report, quiet)
        await store.set_next(session, quiet)
        await store.fill_summaries(session, {k: summary for k, (_f, summary) in older.items()})

    @staticmethod
    async def _older_facts(
        session: AsyncSession, tickets: list[store.ToPlan]
    ) -> dict[int, tuple[Facts, Summary]]:
        """The facts of the batch's tickets older than migration 0014, from their histories,
        with the summaries to keep on their rows from now on."""
        ids = [ticket.id for ticket in tickets if not ticket.summary_kept]
        if not ids:
            return {}
        rows = await store.full_tickets(session, ids)
        histories = await store.histories(session, ids)
        found = {}
        for ticket_id, row in rows.items():
            summary = summarize(histories.get(ticket_id, []))
            found[ticket_id] = (facts_from(row, summary), summary)
        return found

    @staticmethod
    async def _not_sent_yet(
        session: AsyncSession, planned: list[_Planned], report: PassReport
    ) -> list[_Planned]:
        """The planned tickets without the reminders that were sent already (one read for
        the batch): after a policy change, most of what is due now went out before it.
        Claiming stays the authority (a reminder sent since is still found there)."""
        sent = await store.sent_keys(session, [item.ticket_id for item in planned])
        kept: list[_Planned] = []
        for item in planned:
            due = tuple(
                d for d in item.todo.due if (item.ticket_id, d.kind, d.anchor, d.slot) not in sent
            )
            report.already_sent += len(item.todo.due) - len(due)
            todo = item.todo if len(due) == len(item.todo.due) else Plan(due, item.todo.next_at)
            kept.append(_Planned(item.ticket_id, item.tenant, todo))
        return kept

    async def _in_bulk(
        self, session: AsyncSession, to_bulk: list[_InBulk], now: datetime, report: PassReport
    ) -> None:
        """Claim every reminder and nudge of the batch in one INSERT, queue the claimed ones
        in another (a burst to one staff chat as a digest)."""
        claims = [
            store.Claim(item.ticket.id, due.kind, due.anchor, due.slot, due.at, due.late)
            for item in to_bulk
            for due in item.todo.due
        ]
        claimed = await store.claim_many(session, claims, now=now)
        reminders: list[StaffReminder] = []
        messages: list[store.Message] = []
        for item in to_bulk:
            ticket = item.ticket
            for due in item.todo.due:
                if (ticket.id, due.kind, due.anchor, due.slot) not in claimed:
                    report.already_sent += 1
                    continue
                report.count_sent(due.kind)
                if due.kind in STAFF_KINDS:
                    assignee = ticket.assignee_user_id
                    reminders.append(StaffReminder.of(ticket.id, assignee, item.tenant, due))
                else:
                    assert item.row is not None and item.contact is not None
                    messages.append(nudge_message(item.row, item.tenant, due, item.contact, now))
        known = {item.ticket.id: item.row for item in to_bulk if item.row is not None}
        staff = await staff_queue(session, reminders, now, known)
        await store.queue(session, [*staff, *messages])

    async def _alone(
        self,
        session: AsyncSession,
        ticket: store.ToPlan,
        now: datetime,
        report: PassReport,
        quiet: dict[int, datetime],
    ) -> None:
        """Handle one ticket inside its own savepoint, with its ORM row and history; what
        it sent counts once the savepoint is released (the outbox rows are written then)."""
        done = PassReport()
        try:
            tenant = self.tenants.by_slug(ticket.tenant)
            async with session.begin_nested():
                row = await session.get(Ticket, ticket.id)
                if row is None:
                    raise LookupError(f"ticket {ticket.ref} is gone")
                events = await events_of(session, ticket.id)
                next_at = await self._act(session, row, tenant, events, now, done)
        except Exception as error:  # one broken ticket must not stop the others
            self._failed(ticket, error, now, report, quiet)
        else:
            report.add(done)
            quiet[ticket.id] = next_at

    @staticmethod
    def _failed(
        ticket: store.ToPlan,
        error: Exception,
        now: datetime,
        report: PassReport,
        quiet: dict[int, datetime],
    ) -> None:
        """Log what went wrong with one ticket and look at it again later."""
        log.error(
            "clock: ticket %s failed; looking again in %s", ticket.ref, RETRY_AFTER, exc_info=error
        )
        report.failed += 1
        quiet[ticket.id] = now + RETRY_AFTER

    async def _act(
        self,
        session: AsyncSession,
        ticket: Ticket,
        tenant: Tenant,
        events: list[TicketEvent],
        now: datetime,
        report: PassReport,
    ) -> datetime:
        """Plan and act on one ticket; its next look."""
        assert ticket.id is not None
        if tenant.pause_while_awaiting_requester:
            from bot.extensions import resync_due  # the deadline rules live with extensions

            moved = await resync_due(session, ticket, tenant, events, now=now)
            if moved is not None:
                events = [*events, moved]
        summary = Summary.kept_on(ticket)
        if summary.status is None:  # older than migration 0014: kept from now on
            summary = summarize(events)
            for name, value in summary.values().items():
                setattr(ticket, name, value)
        todo = plan(facts_from(ticket, summary), tenant, now, late_after=self.late_after)
        for item in todo.due:
            claimed = await store.claim(
                session,
                ticket_id=ticket.id,
                kind=item.kind,
                anchor_at=item.anchor,
                slot=item.slot,
                due_at=item.at,
                now=now,
                late=item.late,
            )
            if claimed is None:
                report.already_sent += 1
                continue
            await self._send(session, ticket, tenant, item, now)
            report.count_sent(item.kind)
        closed = _status(ticket.status) in CLOSED_STATUSES
        return store.NEVER if closed or todo.next_at is None else todo.next_at

    async def _send(
        self, session: AsyncSession, ticket: Ticket, tenant: Tenant, item: Due, now: datetime
    ) -> None:
        if item.kind in STAFF_KINDS:
            for staff in staff_messages(ticket, tenant, item, now):
                outbox.enqueue(
                    session,
                    channel=staff.channel,
                    recipient=staff.recipient,
                    payload=staff.payload,
                    tenant=staff.tenant,
                    ticket_id=staff.ticket_id,
                    dedupe_key=staff.dedupe_key,
                )
        elif item.kind is ReminderKind.EXPIRE:
            await expire(session, ticket, tenant, now=now)
        else:
            text = nudge_text(ticket, tenant, item)
            await tell_customer(
                session, ticket, tenant, text, key=_key(ticket.id, item, "customer"), now=now
            )


def _key(ticket_id: int | None, item: Due, recipient: object) -> str:
    """The outbox dedupe key: the reminder's identity and its recipient."""
    return f"clock:{ticket_id}:{item.kind}:{item.anchor.isoformat()}:{item.slot}:{recipient}"


_NONE: frozenset[int] = frozenset()


def staff_recipients(
    ticket: AnyTicket | StaffReminder, tenant: Tenant, kind: ReminderKind
) -> list[int]:
    """Reminders go to the assignee, else the staff chat; escalations to the admins, else
    (no admins configured) to the staff chat, so that they are never silently dropped."""
    staff_chat = [tenant.channels.staff_chat_id] if tenant.channels.staff_chat_id else []
    if kind is ReminderKind.BEFORE:
        return [ticket.assignee_user_id] if ticket.assignee_user_id else staff_chat
    return list(tenant.channels.admin_user_ids) or staff_chat


def staff_messages(
    ticket: AnyTicket, tenant: Tenant, item: Due, now: datetime, *, skip: frozenset[int] = _NONE
) -> list[store.Message]:
    """The Telegram messages of one reminder or escalation, one per recipient (but those
    in `skip`: they get it in a digest)."""
    assert ticket.id is not None
    recipients = staff_recipients(ticket, tenant, item.kind)
    if not recipients:
        log.warning("clock: %s reminder for %s has nowhere to go", item.kind, ticket.ref)
        return []
    recipients = [chat for chat in recipients if chat not in skip]
    if not recipients:
        return []
    text = staff_text(ticket, tenant, item, now)
    messages = []
    for chat in recipients:
        payload: dict[str, Any] = {"text": text}
        if chat == tenant.channels.staff_chat_id and ticket.staff_thread_id is not None:
            payload["thread_id"] = ticket.staff_thread_id  # the ticket's forum topic
        messages.append(
            store.Message(
                channel=Channel.TELEGRAM,
                recipient=str(chat),
                payload=payload,
                tenant=tenant.slug,
                ticket_id=ticket.id,
                dedupe_key=_key(ticket.id, item, chat),
            )
        )
    return messages


def nudge_text(ticket: AnyTicket, tenant: Tenant, item: Due) -> str:
    """A nudge in the customer's language: which request waits for them (and, while they
    are unverified, when it closes)."""
    message = VERIFY_NUDGE if item.kind is ReminderKind.VERIFY_NUDGE else REQUESTER_NUDGE
    language = customer_language(ticket, tenant)
    expires = add_duration(item.anchor, tenant.unverified_expire_after, tenant_calendar(tenant))
    return translate(
        language, message, ref=ticket.ref, date=customer_date(expires, tenant, language)
    )


class _Route(NamedTuple):
    """How a message to the requester goes now (`_route`)."""

    sender: str | None = None  # WhatsApp: the business number it goes from
    hold: bool = False  # outside WhatsApp's window: held, and the customer invited back
    refused: str | None = None  # why it cannot go at all (logged)

    @property
    def at_once(self) -> bool:
        return not self.hold and self.refused is None


def _route(channel: str, tenant: Tenant, last: store.LastContact, now: datetime) -> _Route:
    """How a message on `channel` goes to a requester who last wrote as `last` says.

    WhatsApp messages go from the number the customer last wrote to (the tenant's first
    if that is unknown or no longer the tenant's). Outside the 24-hour window after the
    customer last wrote, WhatsApp takes only approved templates: the text is held and the
    tenant's `update` template invites the customer back (`bot.window`); without that
    template the text cannot go at all."""
    if channel != Channel.WHATSAPP:
        return _Route()
    if not tenant.channels.whatsapp_numbers:
        return _Route(refused="no WhatsApp number to write from")
    sender = _business_number(tenant, last.written_to)
    if last.at is not None and now - last.at >= WINDOW:
        if window.UPDATE_TEMPLATE not in tenant.whatsapp_templates:
            return _Route(sender, refused="WhatsApp window closed, no template; not sent")
        return _Route(sender, hold=True)
    return _Route(sender)


def _reachable(
    ticket: store.DueTicket, tenant: Tenant, contact: store.Contact | None, now: datetime
) -> bool:
    """Whether a message to the requester can be queued as it is, now (`tell_customer`
    does the rest: another address, holding it for WhatsApp's window, or logging why not)."""
    return contact is not None and _route(ticket.channel, tenant, contact.last, now).at_once


def nudge_message(
    ticket: store.DueTicket, tenant: Tenant, item: Due, contact: store.Contact, now: datetime
) -> store.Message:
    """A nudge to a requester who can be written to now (`_reachable`), as `tell_customer`
    would queue it."""
    route = _route(ticket.channel, tenant, contact.last, now)
    return store.Message(
        channel=ticket.channel,
        recipient=contact.address,
        payload=_payload(nudge_text(ticket, tenant, item), route),
        tenant=tenant.slug,
        ticket_id=ticket.id,
        dedupe_key=_key(ticket.id, item, "customer"),
    )


def _payload(text: str, route: _Route) -> dict[str, Any]:
    return {"text": text} if route.sender is None else {"text": text, "from": route.sender}


async def tell_customer(
    session: AsyncSession, ticket: Ticket, tenant: Tenant, text: str, *, key: str, now: datetime
) -> bool:
    """Queue `text` to the requester on the ticket's channel (held for WhatsApp's window,
    as `_route` says); False when they cannot be reached."""
    address = await store.customer_address(session, ticket)
    if address is None:
        log.warning("clock: no address for the requester of %s", ticket.ref)
        return False
    last = (
        await store.last_contact(session, ticket, address)
        if ticket.channel == Channel.WHATSAPP
        else store.LastContact()
    )
    route = _route(ticket.channel, tenant, last, now)
    if route.refused is not None:
        log.warning("clock: %s: %s", ticket.ref, route.refused)
        return False
    payload = _payload(text, route)
    if route.hold:
        await window.hold(
            session,
            tenant,
            recipient=address,
            payload=payload,
            ticket_id=ticket.id,
            key=key,
            now=now,
            language=customer_language(ticket, tenant),
        )
        log.info("clock: %s: outside the WhatsApp window; held, customer invited", ticket.ref)
        return True
    outbox.enqueue(
        session,
        channel=ticket.channel,
        recipient=address,
        payload=payload,
        tenant=tenant.slug,
        ticket_id=ticket.id,
        dedupe_key=key,
    )
    return True


def _business_number(tenant: Tenant, written_to: str | None) -> str:
    """`whatsapp:+E164` to write from: the one the customer wrote to, if still the tenant's."""
    numbers = [f"whatsapp:{number}" for number in tenant.channels.whatsapp_numbers]
    return written_to if written_to in numbers else numbers[0]


async def expire(session: AsyncSession, ticket: Ticket, tenant: Tenant, *, now: datetime) -> None:
    """Close a request that was never verified, record why, and tell the requester."""
    ticket.status = TicketStatus.EXPIRED
    ticket.closed_at = now
    ticket.updated_at = now
    await add_event(
        session,
        ticket,
        actor="system",
        kind="expired",
        at=now,
        data={
            "status": str(TicketStatus.EXPIRED),
            "reason": "unverified",
            "after": str(tenant.unverified_expire_after),
        },
    )
    language = customer_language(ticket, tenant)
    text = translate(language, EXPIRED_NOTICE, ref=ticket.ref)
    await tell_customer(session, ticket, tenant, text, key=f"expired:{ticket.id}", now=now)
    log.info("ticket %s expired unverified", ticket.ref)
