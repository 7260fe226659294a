"""The clock's queries: which tickets need a look, claiming a reminder, where a customer is.

Each ticket carries `next_reminder_at`, the moment the clock should look at it again (an
index makes "what is due now" one range scan however many tickets are open). NULL means
"plan me": a ticket is born with it, and changing its `status` or `due_at` through the
ORM sets it back to NULL (the listener beside the model in `storage.models`), so a new
deadline is planned at the next pass whoever changed it. Code that changes those columns
with a bulk UPDATE must set `next_reminder_at = NULL` itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import ContactIdentity, Conversation, ReminderSent, Ticket, TicketEvent

NEVER = datetime(9999, 1, 1, tzinfo=UTC)
"""`next_reminder_at` of a ticket the clock has nothing more to do for (closed, paused)."""

_TICKET = Ticket.__table__  # type: ignore[attr-defined]
_SENT = ReminderSent.__table__  # type: ignore[attr-defined]


async def due_tickets(session: AsyncSession, *, now: datetime, limit: int) -> list[Ticket]:
    """Lock up to `limit` tickets the clock must look at: unplanned, or their time has come.

    On PostgreSQL the rows stay locked until the caller's transaction ends and SKIP LOCKED
    lets a second scheduler take other tickets instead of waiting for these.
    """
    wanted = sa.or_(
        col(Ticket.next_reminder_at).is_(None),
        col(Ticket.next_reminder_at) <= now,
    )
    result = await session.exec(
        select(Ticket)
        .where(wanted)
        .order_by(col(Ticket.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return list(result)


async def next_wake(session: AsyncSession) -> datetime | None:
    """The earliest planned `next_reminder_at`; unplanned tickets wait for the regular pass."""
    result = await session.exec(
        select(sa.func.min(_TICKET.c.next_reminder_at)).where(_TICKET.c.next_reminder_at < NEVER)
    )
    return result.one()  # type: ignore[no-any-return]


async def set_next(session: AsyncSession, when_by_ticket: Mapping[int, datetime]) -> None:
    """Set the next look of several tickets in one statement, touching nothing else."""
    if not when_by_ticket:
        return
    statement = (
        sa.update(_TICKET)
        .where(_TICKET.c.id == sa.bindparam("ticket_id"))
        .values(next_reminder_at=sa.bindparam("next_at"))
    )
    connection = await session.connection()
    await connection.execute(
        statement, [{"ticket_id": k, "next_at": v} for k, v in when_by_ticket.items()]
    )


async def events_by_ticket(
    session: AsyncSession, ticket_ids: Sequence[int]
) -> dict[int, list[TicketEvent]]:
    """The histories of several tickets in one query, each oldest first."""
    found: dict[int, list[TicketEvent]] = defaultdict(list)
    if not ticket_ids:
        return found
    result = await session.exec(
        select(TicketEvent)
        .where(col(TicketEvent.ticket_id).in_(ticket_ids))
        .order_by(col(TicketEvent.ticket_id), col(TicketEvent.id))
    )
    for row in result:
        found[row.ticket_id].append(row)
    return found


async def claim(
    session: AsyncSession,
    *,
    ticket_id: int,
    kind: str,
    anchor_at: datetime,
    slot: str,
    due_at: datetime,
    now: datetime,
    late: bool,
) -> int | None:
    """Record that this reminder is being sent; its id, or None if it already was.

    INSERT … ON CONFLICT DO NOTHING: of two processes racing on one PostgreSQL database the
    second waits for the first to commit and then inserts nothing, so only one of them goes
    on to queue the message.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    result = await session.exec(
        insert(_SENT)
        .values(
            ticket_id=ticket_id,
            kind=kind,
            anchor_at=anchor_at,
            slot=slot,
            due_at=due_at,
            sent_at=now,
            late=late,
        )
        .on_conflict_do_nothing(index_elements=["ticket_id", "kind", "anchor_at", "slot"])
        .returning(_SENT.c.id)
    )
    row = result.first()
    return int(row[0]) if row else None


async def sent_for(session: AsyncSession, ticket_id: int) -> list[ReminderSent]:
    """What the clock has done for one ticket, in order."""
    result = await session.exec(
        select(ReminderSent)
        .where(ReminderSent.ticket_id == ticket_id)
        .order_by(col(ReminderSent.id))
    )
    return list(result)


async def customer_address(session: AsyncSession, ticket: Ticket) -> str | None:
    """Where the requester talks to the bot on the ticket's channel, or None if unknown.

    The conversation the requester last used on that channel with this business is the
    address the dialogue itself answers to (`whatsapp:+E164`, or the Telegram chat id);
    failing that, a contact identity of the channel's kind.
    """
    if ticket.requester_id is None:
        return None
    conversation = await session.exec(
        select(Conversation.address)
        .where(
            Conversation.requester_id == ticket.requester_id,
            Conversation.channel == ticket.channel,
            Conversation.tenant == ticket.tenant,
        )
        .order_by(col(Conversation.updated_at).desc())
        .limit(1)
    )
    address = conversation.first()
    if address:
        return address
    identity = await session.exec(
        select(ContactIdentity.value)
        .where(
            ContactIdentity.requester_id == ticket.requester_id,
            ContactIdentity.kind == ticket.channel,
        )
        .order_by(col(ContactIdentity.id).desc())
        .limit(1)
    )
    value = identity.first()
    if value and ticket.channel == "whatsapp" and not value.startswith("whatsapp:"):
        return f"whatsapp:{value}"
    return value


async def last_inbound_at(session: AsyncSession, ticket: Ticket, address: str) -> datetime | None:
    """When the requester last wrote on this conversation (WhatsApp's 24-hour window)."""
    result = await session.exec(
        select(Conversation.last_inbound_at).where(
            Conversation.channel == ticket.channel,
            Conversation.address == address,
            Conversation.tenant == ticket.tenant,
        )
    )
    return result.first()
