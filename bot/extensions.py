"""Moving a deadline: extensions the law allows, and clocks stopped while the requester is asked.

An extension needs a reason, must be made before the current deadline passes (GDPR
Art. 12(3) and CCPA regs §7021(b) want the requester told within the first period),
may not end later than the tenant's `[extensions].max` after the *original* deadline,
is recorded in the ticket's history with who, why, the old and the new date, and, when
the tenant says so (`notify_requester`), tells the requester the new date and the reason.

Events that move a deadline carry `due_at` in their data; `bot.reminders` reads that to
drop reminders that were timed for an earlier deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import Duration, due_with_pauses, extend, max_extended_due, parse_duration
from bot.i18n import _, translate
from bot.reminders import customer_date, customer_language, tell_customer, tenant_calendar
from bot.tenants import Tenant
from storage.enums import CLOSED_STATUSES, RequestType, TicketStatus
from storage.models import Ticket, TicketEvent
from storage.tickets import add_event, events_of

log = logging.getLogger(__name__)

EXTENDED_NOTICE = _(
    "We need more time to complete your request {ref}. The new date is {date}. Reason: {reason}"
)
TO_THE_MAXIMUM = "max"  # an extension without an amount goes as far as the law allows


class ExtensionRefused(ValueError):
    """Why a deadline cannot be extended, in words staff can be shown."""


@dataclass(frozen=True, slots=True)
class Extension:
    """A granted extension: the deadline before and after, and the history line it left."""

    old_due: datetime
    new_due: datetime
    original_due: datetime
    requester_notified: bool
    event: TicketEvent


def _original_due(events: list[TicketEvent]) -> datetime | None:
    for event in events:
        if event.kind == "extended" and "original_due_at" in event.data:
            return datetime.fromisoformat(event.data["original_due_at"])
    return None


async def extend_ticket(
    session: AsyncSession,
    ticket: Ticket,
    tenant: Tenant,
    *,
    reason: str,
    actor: str,
    now: datetime,
    by: Duration | None = None,
) -> Extension:
    """Extend `ticket`'s deadline by `by`, or to the latest the tenant's law allows.

    Raises ExtensionRefused (nothing changed) when there is no reason, the policy allows
    no extension, the ticket is closed or has no deadline, the deadline has passed, or the
    new deadline would end after `max` from the original deadline.
    """
    assert ticket.id is not None
    reason = " ".join(reason.split())
    if not reason:
        raise ExtensionRefused("an extension needs a reason: the requester is told it")
    limit = tenant.extensions.max
    if limit is None:
        raise ExtensionRefused(f"the policy of {tenant.name} allows no extension")
    if ticket.status in CLOSED_STATUSES:
        raise ExtensionRefused(f"{ticket.ref} is already {ticket.status}")
    if ticket.due_at is None:
        raise ExtensionRefused(f"{ticket.ref} has no deadline to extend")
    if now > ticket.due_at:
        raise ExtensionRefused(
            f"the deadline of {ticket.ref} has passed: an extension must be made, and the "
            "requester told, before it"
        )
    calendar = tenant_calendar(tenant)
    original = _original_due(await events_of(session, ticket.id)) or ticket.due_at
    latest = max_extended_due(original, limit, calendar)
    new_due = latest if by is None else extend(ticket.due_at, by, calendar)
    if new_due > latest:
        raise ExtensionRefused(
            f"{by} more would end after the latest deadline allowed, {latest.isoformat()} "
            f"({limit} after the original {original.isoformat()})"
        )
    if new_due <= ticket.due_at:
        raise ExtensionRefused(f"{ticket.ref} is already extended as far as {limit} allows")
    old_due = ticket.due_at
    notified = False
    if tenant.extensions.notify_requester:
        language = customer_language(ticket, tenant)
        text = translate(
            language,
            EXTENDED_NOTICE,
            ref=ticket.ref,
            date=customer_date(new_due, tenant, language),
            reason=reason,
        )
        key = f"extended:{ticket.id}:{new_due.isoformat()}"
        notified = await tell_customer(session, ticket, tenant, text, key=key, now=now)
    ticket.due_at = new_due  # a trigger unplans it: the next pass plans the new deadline
    ticket.updated_at = now
    event = await add_event(
        session,
        ticket,
        actor=actor,
        kind="extended",
        at=now,
        data={
            "reason": reason,
            "from": old_due.isoformat(),
            "due_at": new_due.isoformat(),
            "original_due_at": original.isoformat(),
            "by": str(by) if by is not None else TO_THE_MAXIMUM,
            "max": str(limit),
            "requester_notified": notified,
        },
    )
    log.info("ticket %s extended by %s", ticket.ref, actor)
    return Extension(old_due, new_due, original, notified, event)


def pauses_of(events: list[TicketEvent]) -> list[tuple[datetime, datetime | None]]:
    """The spans the ticket spent awaiting the requester, from its status events."""
    pauses: list[tuple[datetime, datetime | None]] = []
    begin: datetime | None = None
    for event in events:
        status = event.data.get("status") if event.data else None
        if not isinstance(status, str):
            continue
        if status == TicketStatus.AWAITING_REQUESTER and begin is None:
            begin = event.at
        elif status != TicketStatus.AWAITING_REQUESTER and begin is not None:
            pauses.append((begin, event.at))
            begin = None
    if begin is not None:
        pauses.append((begin, None))
    return pauses


async def resync_due(
    session: AsyncSession,
    ticket: Ticket,
    tenant: Tenant,
    events: list[TicketEvent],
    *,
    now: datetime,
) -> TicketEvent | None:
    """For a tenant that stops the clock while awaiting the requester: recompute `due_at`
    from when the clock started, the time spent waiting and the extensions granted.

    Only tickets that have waited are touched. While a wait is still open the deadline is
    left as it is (and `bot.reminders` holds the reminders); when it ends, the deadline
    moves later by the time waited and the move is recorded. Returns that event, if any.
    """
    if ticket.clock_started_at is None or ticket.due_at is None:
        return None
    pauses = pauses_of(events)
    if not pauses or ticket.kind not in tenant.requests:
        return None
    duration = tenant.requests[RequestType(ticket.kind)]
    calendar = tenant_calendar(tenant)
    base = due_with_pauses(ticket.clock_started_at, duration, calendar, pauses)
    if base is None:
        return None
    due = base
    for event in events:
        if event.kind != "extended" or tenant.extensions.max is None:
            continue
        amount = event.data.get("by", TO_THE_MAXIMUM)
        if amount == TO_THE_MAXIMUM:
            due = max_extended_due(base, tenant.extensions.max, calendar)
        else:
            due = extend(due, parse_duration(amount), calendar)
    if due == ticket.due_at:
        return None
    old_due = ticket.due_at
    ticket.due_at = due
    ticket.updated_at = now
    return await add_event(
        session,
        ticket,
        actor="system",
        kind="deadline_moved",
        at=now,
        data={
            "reason": "clock stopped while awaiting the requester",
            "from": old_due.isoformat(),
            "due_at": due.isoformat(),
        },
    )
