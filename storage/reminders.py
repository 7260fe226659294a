"""The clock's queries: which tickets need a look, claiming a reminder, where a customer is.

Each ticket has a `ticket_clock` row whose `next_at` is the moment the clock should look at
it again (an index makes "what is due now" one range scan however many tickets are open).
NULL means "plan me": a ticket is born with it, and a change of its `status` or `due_at`
sets it back to NULL (triggers, migration 0015, whatever the UPDATE), so a new deadline is
planned at the next pass whoever changed it. Many tickets are planned in sets (`groups`,
`plan_groups`: one UPDATE from the pieces of a plan that groups of them share); a changed
reminder policy plans its tenant's open tickets again that way (`adopt_policy`), or
unplans them for the pass (`unplan`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.admin_queries import ACTIVE_SQL, ACTIVE_STATUSES
from storage.crypto import blind_index
from storage.enums import OutboxStatus
from storage.history import Summary
from storage.models import (
    ClockPolicy,
    ContactIdentity,
    Conversation,
    OutboundMessage,
    ReminderSent,
    Ticket,
    TicketClock,
    TicketEvent,
    utcnow,
)

NEVER = datetime(9999, 1, 1, tzinfo=UTC)
"""The next look of a ticket the clock has nothing more to do for (closed, paused)."""

_TICKET = Ticket.__table__  # type: ignore[attr-defined]
_EVENT = TicketEvent.__table__  # type: ignore[attr-defined]
_SENT = ReminderSent.__table__  # type: ignore[attr-defined]
_OUTBOX = OutboundMessage.__table__  # type: ignore[attr-defined]
_POLICY = ClockPolicy.__table__  # type: ignore[attr-defined]
_CLOCK = TicketClock.__table__  # type: ignore[attr-defined]
_READ = _CLOCK.alias("read")  # a ticket's clock row as a planning in sets read it


@dataclass(frozen=True, slots=True)
class DueTicket:
    """The columns of a ticket the clock reads, as plain values: no ORM object, no identity
    map, and no sealed `details` to open."""

    id: int
    tenant: str
    ref: str
    kind: str
    status: str
    channel: str
    language: str
    requester_id: int | None
    received_at: datetime
    clock_started_at: datetime | None
    due_at: datetime | None
    updated_at: datetime
    assignee_user_id: int | None
    assignee_name: str | None
    staff_thread_id: int | None


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a ticket's history, as far as planning reads it."""

    at: datetime
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToPlan:
    """What planning reads of a ticket, worked out by the database from its row and its
    history's summary (`storage.history.Summary`): three timestamps to convert, not nine.

    `status_since` is when the history says the current status began (its last change
    otherwise); `deadline_set_at` the clock's start or the last event that set a deadline,
    whichever is later. `summary_kept` False: a row older than migration 0014, whose facts
    come from its history instead (`full_tickets`, `histories`).
    """

    id: int
    tenant: str
    ref: str
    status: str
    due_at: datetime | None
    deadline_set_at: datetime
    status_since: datetime
    summary_kept: bool
    assignee_user_id: int | None  # who a reminder before its deadline goes to


_DUE_COLUMNS = [_TICKET.c[name] for name in DueTicket.__slots__]
_started = sa.func.coalesce(_TICKET.c.clock_started_at, _TICKET.c.received_at)
_SET_AT = sa.type_coerce(  # `ToPlan.deadline_set_at`
    sa.case((_TICKET.c.history_due_set_at > _started, _TICKET.c.history_due_set_at),
            else_=_started),
    _TICKET.c.received_at.type,
)  # fmt: skip
_SINCE = sa.type_coerce(  # `ToPlan.status_since`
    sa.case((_TICKET.c.history_status == _TICKET.c.status, _TICKET.c.history_status_at),
            else_=_TICKET.c.updated_at),
    _TICKET.c.updated_at.type,
)  # fmt: skip
PLAN_COLUMNS = [
    _TICKET.c.id,
    _TICKET.c.tenant,
    _TICKET.c.ref,
    _TICKET.c.status,
    _TICKET.c.due_at,
    _SET_AT,
    _SINCE,
    _TICKET.c.history_status.is_not(None),
    _TICKET.c.assignee_user_id,
]


async def due_tickets(
    session: AsyncSession, *, now: datetime, limit: int, up_to: int | None = None
) -> list[ToPlan]:
    """Lock up to `limit` tickets the clock must look at: unplanned, or their time has come.

    Each kind is found on the `next_at` index by itself (one `OR` query ends up
    scanning the whole table: 0.15 s at a million tickets, per batch), the unplanned first,
    then the earliest due; the ticket rows are read by id once found. On PostgreSQL they
    stay locked until the caller's transaction ends; SKIP LOCKED passes over a ticket that
    another scheduler (or a desk action) holds, and a batch may then be short. With
    `up_to`, only tickets whose id is not above it (the pass's slice, `Scope.up_to`).
    """
    column = _CLOCK.c.next_at
    sliced = [] if up_to is None else [_CLOCK.c.ticket_id <= up_to]
    connection = await session.connection()
    found: list[ToPlan] = []
    for wanted in (column.is_(None), column <= now):
        if len(found) == limit:
            break
        # ordered by the index even among NULLs: without it SQLite's statistics (half the
        # rows NULL when a catch-up starts) pick a table scan that walks past every ticket
        # planned so far, batch after batch
        picked = sa.select(_CLOCK.c.ticket_id).where(wanted, *sliced).order_by(column)
        rows = await connection.execute(
            sa.select(*PLAN_COLUMNS)
            .where(_TICKET.c.id.in_(picked.limit(limit - len(found))))
            .order_by(_TICKET.c.id)
            .with_for_update(skip_locked=True)  # the ticket's row, which the desk locks too
        )
        found.extend(ToPlan(*row) for row in rows)
    return sorted(found, key=attrgetter("id"))


async def full_tickets(session: AsyncSession, ticket_ids: Sequence[int]) -> dict[int, DueTicket]:
    """The columns the clock's messages read, of the tickets that have something to send."""
    if not ticket_ids:
        return {}
    connection = await session.connection()
    rows = await connection.execute(sa.select(*_DUE_COLUMNS).where(_TICKET.c.id.in_(ticket_ids)))
    return {row[0]: DueTicket(*row) for row in rows}


async def next_wake(session: AsyncSession) -> datetime | None:
    """The earliest planned next look; unplanned tickets wait for the regular pass."""
    result = await session.exec(
        select(sa.func.min(_CLOCK.c.next_at)).where(_CLOCK.c.next_at < NEVER)
    )
    return result.one()  # type: ignore[no-any-return]


async def set_next(session: AsyncSession, when_by_ticket: Mapping[int, datetime]) -> None:
    """Set the next look of several tickets in one statement, touching nothing else.

    The pairs travel as one parameter (two arrays on PostgreSQL, a JSON list on SQLite)
    joined to the table by id: an UPDATE … WHERE id = ? run once per ticket costs PostgreSQL
    a statement each. Each distinct time is converted to the column's stored form once."""
    if not when_by_ticket:
        return
    connection = await session.connection()
    dialect = connection.dialect
    process = _NEXT_TYPE.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)
    stored = {when: process(when) for when in set(when_by_ticket.values())}
    if dialect.name == "postgresql":
        times = [stored[when] for when in when_by_ticket.values()]
        await connection.execute(_SET_NEXT_PG, {"ids": list(when_by_ticket), "times": times})
        return
    pairs = [[ticket_id, stored[when]] for ticket_id, when in when_by_ticket.items()]
    await connection.execute(_SET_NEXT_SQLITE, {"pairs": json.dumps(pairs)})


_NEXT_TYPE = _CLOCK.c.next_at.type
_SET_NEXT_PG = sa.text(
    "UPDATE ticket_clock SET next_at = v.next_at "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:times AS timestamptz[])) AS v(id, next_at) "
    "WHERE ticket_clock.ticket_id = v.id"
)
_SET_NEXT_SQLITE = sa.text(  # UPDATE … FROM: SQLite 3.33 (RETURNING, used here too: 3.35)
    "UPDATE ticket_clock SET next_at = json_extract(pair.value, '$[1]') "
    "FROM json_each(:pairs) AS pair WHERE ticket_clock.ticket_id = json_extract(pair.value, '$[0]')"
)


async def fill_summaries(session: AsyncSession, summaries: Mapping[int, Summary]) -> None:
    """Keep on their rows the history summaries of tickets that had none (older than
    migration 0014), read from their histories; a row that has one meanwhile keeps it."""
    if not summaries:
        return
    statement = (
        sa.update(_TICKET)
        .where(_TICKET.c.id == sa.bindparam("ticket_id"), _TICKET.c.history_status.is_(None))
        .values(
            history_status=sa.bindparam("kept_status"),
            history_status_at=sa.bindparam("kept_status_at"),
            history_due_set_at=sa.bindparam("kept_due_set_at"),
        )
    )
    rows = [
        {"ticket_id": ticket_id, **{f"kept_{k}": v for k, v in asdict(summary).items()}}
        for ticket_id, summary in summaries.items()
    ]
    connection = await session.connection()
    await connection.execute(statement, rows)


async def adopt_policy(
    session: AsyncSession, *, tenant: str, fingerprint: str, now: datetime
) -> bool:
    """Record that `tenant`'s tickets are planned under `fingerprint` (`policy_changed`
    said they were not, and they have been planned again or unplanned in this
    transaction); True when that changed the record.

    INSERT … ON CONFLICT DO UPDATE … WHERE the fingerprint differs, RETURNING: a row comes
    back only to the process that changed it (on PostgreSQL a second one starting at the
    same time waits for the first to commit and then finds nothing to change).
    """
    values = {"tenant": tenant, "fingerprint": fingerprint, "changed_at": now}
    insert = _insert(session)(_POLICY).values(**values)
    statement = insert.on_conflict_do_update(
        index_elements=["tenant"],
        set_={"fingerprint": insert.excluded.fingerprint, "changed_at": insert.excluded.changed_at},
        where=_POLICY.c.fingerprint != insert.excluded.fingerprint,
    ).returning(_POLICY.c.tenant)
    connection = await session.connection()
    return (await connection.execute(statement)).first() is not None


async def policy_changed(session: AsyncSession, *, tenant: str, fingerprint: str) -> bool:
    """Whether `tenant`'s tickets were planned under another policy than `fingerprint`
    (or under none yet); `adopt_policy` records the new one."""
    connection = await session.connection()
    found = await connection.execute(
        sa.select(_POLICY.c.fingerprint).where(_POLICY.c.tenant == tenant)
    )
    return found.scalar_one_or_none() != fingerprint


async def unplan(session: AsyncSession, tenant: str, *, after: int = 0) -> int:
    """Unplan `tenant`'s open tickets (those with an id above `after`) for the next pass
    to plan; how many."""
    open_tickets = sa.select(_TICKET.c.id).where(
        _TICKET.c.tenant == tenant, ACTIVE_SQL, _TICKET.c.id > after
    )
    connection = await session.connection()
    unplanned = await connection.execute(
        sa.update(_CLOCK)
        .where(
            _CLOCK.c.ticket_id.in_(open_tickets),
            _CLOCK.c.next_at.is_not(None),  # unplanned already: left as they are
        )
        .values(next_at=None)
    )
    return int(unplanned.rowcount)


async def histories(session: AsyncSession, ticket_ids: Sequence[int]) -> dict[int, list[Step]]:
    """The histories of several tickets in one query, each oldest first."""
    found: dict[int, list[Step]] = defaultdict(list)
    if not ticket_ids:
        return found
    query = (
        sa.select(_EVENT.c.ticket_id, _EVENT.c.at, _EVENT.c.kind, _EVENT.c.data)
        .where(_EVENT.c.ticket_id.in_(ticket_ids))
        .order_by(_EVENT.c.ticket_id, _EVENT.c.id)
    )
    connection = await session.connection()
    for ticket_id, at, kind, data in await connection.execute(query):
        found[ticket_id].append(Step(at, kind, data))
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
    result = await session.exec(
        _insert(session)(_SENT)
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


async def sent_keys(
    session: AsyncSession, ticket_ids: Sequence[int]
) -> set[tuple[int, str, datetime, str]]:
    """The (ticket, kind, anchor, slot) of every reminder already claimed for these tickets."""
    if not ticket_ids:
        return set()
    connection = await session.connection()
    rows = await connection.execute(
        sa.select(_SENT.c.ticket_id, _SENT.c.kind, _SENT.c.anchor_at, _SENT.c.slot).where(
            _SENT.c.ticket_id.in_(ticket_ids)
        )
    )
    return {(row[0], row[1], row[2], row[3]) for row in rows}


class Claim(NamedTuple):
    """A reminder about to be sent, or claimed: (ticket_id, kind, anchor_at, slot) is its
    identity. One claimed in sets (`plan_groups`) also says where it goes: its ticket's
    tenant and assignee."""

    ticket_id: int
    kind: str
    anchor_at: datetime
    slot: str
    due_at: datetime
    late: bool
    tenant: str = ""
    assignee_user_id: int | None = None


async def claim_many(
    session: AsyncSession, claims: Sequence[Claim], *, now: datetime
) -> set[tuple[int, str, datetime, str]]:
    """`claim` for a whole batch: the keys this call recorded; the others were already sent.

    Multi-row INSERT … ON CONFLICT DO NOTHING RETURNING: a row that exists (or that another
    process is inserting, which PostgreSQL waits for) comes back as nothing, so only one
    process ever queues its message.
    """
    if not claims:
        return set()
    statement = (
        _insert(session)(_SENT)
        .on_conflict_do_nothing(index_elements=["ticket_id", "kind", "anchor_at", "slot"])
        .returning(_SENT.c.ticket_id, _SENT.c.kind, _SENT.c.anchor_at, _SENT.c.slot)
    )
    rows = [
        {
            "ticket_id": c.ticket_id,
            "kind": c.kind,
            "anchor_at": c.anchor_at,
            "slot": c.slot,
            "due_at": c.due_at,
            "sent_at": now,
            "late": c.late,
        }
        for c in claims
    ]
    connection = await session.connection()
    result = await connection.execute(statement, rows)
    return {(row[0], row[1], row[2], row[3]) for row in result}


@dataclass(frozen=True, slots=True)
class Message:
    """A message the clock queues: `outbox.enqueue`'s arguments, for many at once."""

    channel: str
    recipient: str
    payload: dict[str, Any]
    tenant: str
    ticket_id: int | None  # None: a digest of several tickets
    dedupe_key: str


async def queue(session: AsyncSession, messages: Sequence[Message]) -> None:
    """Add messages to the outbox in one statement, as `outbox.enqueue` would one by one;
    one whose `dedupe_key` is already queued is not queued again."""
    if not messages:
        return
    created = utcnow()
    rows = [
        {
            "channel": m.channel,
            "tenant": m.tenant,
            "recipient": m.recipient,
            "recipient_index": blind_index(m.recipient),
            "payload": m.payload,
            "status": OutboxStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": created,
            "dedupe_key": m.dedupe_key,
            "ticket_id": m.ticket_id,
            "created_at": created,
        }
        for m in messages
    ]
    statement = _insert(session)(_OUTBOX).on_conflict_do_nothing(index_elements=["dedupe_key"])
    connection = await session.connection()
    await connection.execute(statement, rows)


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, which has ON CONFLICT."""
    return _insert_for(session.get_bind().dialect.name)


def _insert_for(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


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


@dataclass(frozen=True, slots=True)
class LastContact:
    """When the requester last wrote on a conversation, and on WhatsApp to which number."""

    at: datetime | None = None
    written_to: str | None = None


async def last_contact(session: AsyncSession, ticket: Ticket, address: str) -> LastContact:
    """The requester's last message on this conversation (WhatsApp's 24-hour window)."""
    result = await session.exec(
        select(Conversation.last_inbound_at, Conversation.written_to).where(
            Conversation.channel == ticket.channel,
            Conversation.address_index == blind_index(address),
            Conversation.tenant == ticket.tenant,
        )
    )
    row = result.first()
    return LastContact() if row is None else LastContact(row[0], row[1])


@dataclass(frozen=True, slots=True)
class Contact:
    """Where a requester talks to the bot on a ticket's channel, and when they last wrote."""

    address: str
    last: LastContact


async def contacts(session: AsyncSession, tickets: Sequence[DueTicket]) -> dict[int, Contact]:
    """`customer_address` and `last_contact` for many tickets at once: the conversation
    each requester last used on the ticket's channel with this business. A ticket whose
    requester has none is left out (`customer_address` then looks further)."""
    wanted = {(t.requester_id, t.channel, t.tenant) for t in tickets if t.requester_id}
    if not wanted:
        return {}
    conversation = Conversation.__table__.c  # type: ignore[attr-defined]
    connection = await session.connection()
    rows = await connection.execute(
        sa.select(
            conversation.requester_id,
            conversation.channel,
            conversation.tenant,
            conversation.address,
            conversation.last_inbound_at,
            conversation.written_to,
        )
        .where(conversation.requester_id.in_({key[0] for key in wanted}))
        .order_by(conversation.updated_at, conversation.id)  # the last one wins
    )
    latest = {
        (requester, channel, tenant): Contact(address, LastContact(at, written_to))
        for requester, channel, tenant, address, at, written_to in rows
    }
    found = {t.id: latest.get((t.requester_id, t.channel, t.tenant)) for t in tickets}
    return {ticket_id: contact for ticket_id, contact in found.items() if contact is not None}


# --- planning in sets -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    """Tickets of one tenant in one status with one deadline: what they share of a plan."""

    tenant: str
    status: str
    due_at: datetime | None


@dataclass(frozen=True, slots=True)
class Piece:
    """The next look of a `Group`'s tickets whose deadline was set in (`set_after`,
    `set_upto`] (None: unbounded), worked out once for all of them.

    `reminder` (kind, slot, at) is a reminder due now: a ticket that has sent it looks next
    at `next_at`, one that has not at `at`, so that the same pass sends it. The waiting
    part comes from each ticket's `status_since`: a look at since + `nudge_at` while since
    + `nudge_until` is ahead, and one at since + `expires_from`. A ticket looked at too
    early is planned on its own then; one never too late."""

    group: Group
    set_after: datetime | None
    set_upto: datetime | None
    next_at: datetime  # NEVER: nothing more unless the ticket changes
    reminder: tuple[str, str, datetime] | None = None
    late: bool = False  # the reminder is found later than `late_after` past its time
    nudge_at: timedelta | None = None
    nudge_until: timedelta | None = None
    expires_from: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Scope:
    """The tickets one planning in sets covers: the unplanned ones (and those whose next
    look has come by `due`), or every open ticket of the `tenants` whose policies changed;
    of those, only the tickets whose id is above `after` and not above `up_to` (a pass's
    slice, `slice_end`)."""

    tenants: tuple[str, ...] | None = None
    due: datetime | None = None
    after: int = 0
    up_to: int | None = None

    def _looked_at(self, clock: Any) -> sa.ColumnElement[bool]:
        """Unplanned, or due by `due`: a clock row the pass must look at."""
        unplanned: sa.ColumnElement[bool] = clock.c.next_at.is_(None)
        if self.due is None:
            return unplanned
        return sa.or_(unplanned, clock.c.next_at <= self.due)

    def ids(self) -> sa.Select[tuple[int]] | sa.CompoundSelect[tuple[int]]:
        """Their ids, found on an index."""
        if self.tenants is None:
            # each range by the index, even among NULLs (SQLite's statistics prefer a scan
            # otherwise; with OR, both databases walked the whole index when few were due)
            wanted = [_CLOCK.c.next_at.is_(None)]
            if self.due is not None:
                wanted.append(_CLOCK.c.next_at <= self.due)
            sliced = self._sliced(_CLOCK.c.ticket_id)
            ranges = [
                sa.select(_CLOCK.c.ticket_id)
                .where(where, *sliced)
                .order_by(_CLOCK.c.next_at)
                .subquery()
                for where in wanted
            ]
            found = [sa.select(part.c.ticket_id).correlate(None) for part in ranges]
            return found[0] if len(found) == 1 else sa.union_all(*found)
        tenants = sa.select(_TICKET.c.id).where(
            _TICKET.c.tenant.in_(self.tenants), ACTIVE_SQL, *self._sliced(_TICKET.c.id)
        )
        return tenants.correlate(None)

    def _sliced(self, ticket_id: Any) -> list[sa.ColumnElement[bool]]:
        above = [ticket_id > self.after] if self.after else []
        return above if self.up_to is None else [*above, ticket_id <= self.up_to]

    def select(self, postgres: bool, *columns: Any) -> sa.Select[Any]:
        """`columns` of the tickets in scope, from `ticket` (and on PostgreSQL its clock
        row, as `_READ`). SQLite is given the list of ids (it then reads each ticket by its
        id); PostgreSQL the conditions themselves (given a list, it compared it with every
        ticket), "open" among them so that it reads the open tickets' own index
        (`ix_ticket_open_clock`, migration 0016) rather than the whole table."""
        if not postgres:
            kept = _TICKET.c.history_status.is_not(None)
            alone = [kept] if self.tenants is None else []  # rows older than 0014: left out
            return sa.select(*columns).where(_TICKET.c.id.in_(self.ids()), *alone)
        which = (
            [_TICKET.c.history_status.is_not(None), self._looked_at(_READ)]  # a clock row:
            if self.tenants is None  # always open (migration 0016)
            else [_TICKET.c.tenant.in_(self.tenants)]
        )
        source = _TICKET.join(_READ, _READ.c.ticket_id == _TICKET.c.id)
        sliced = self._sliced(_TICKET.c.id)
        return sa.select(*columns).select_from(source).where(*which, *sliced, ACTIVE_SQL)


# The key of the lock that lets one process at a time plan in sets (PostgreSQL)
IN_SETS_LOCK = int.from_bytes(b"rd-clock", "big") >> 1


async def hold_in_sets(session: AsyncSession) -> None:
    """Wait for the right to plan in sets until the transaction ends (PostgreSQL; SQLite
    has one writer at a time anyway). Two passes planning the same tickets in sets would
    each claim, and write the looks of, rows the other holds, in no shared order; the
    second now waits for the first and then finds what it left."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(sa.select(sa.func.pg_advisory_xact_lock(IN_SETS_LOCK)))


async def count(session: AsyncSession, scope: Scope, *, at_most: int) -> int:
    """How many tickets `scope` holds, counted up to `at_most`."""
    connection = await session.connection()
    some = scope.ids().limit(at_most).subquery()
    return int(
        (await connection.execute(sa.select(sa.func.count()).select_from(some))).scalar_one()
    )


async def slice_end(session: AsyncSession, scope: Scope, size: int) -> int | None:
    """Where a pass over `scope` stops when it holds more than `size` tickets: the id of
    its `size`-th ticket in id order (a `Scope` with that `up_to` holds the first `size`);
    None when it holds no more than `size`. Counted first, on the index, as the regular
    pass finds few: in id order SQLite reads the whole clock table (≈ 10 ms at 100,000
    open tickets, a pass's p95 9.6 -> 21.6 ms in `bench.scale`)."""
    if await count(session, scope, at_most=size + 1) <= size:
        return None
    connection = await session.connection()
    ids = scope.ids().subquery()
    query = sa.select(ids.c[0]).order_by(ids.c[0]).offset(size - 1).limit(2)
    found = [row[0] for row in await connection.execute(query)]
    return found[0] if len(found) == 2 else None


async def groups(session: AsyncSession, scope: Scope) -> list[Group]:
    """The (tenant, status, deadline) groups of the tickets in `scope`. Tenants' open
    tickets are grouped from an index of open tickets alone (no ticket row read): on
    PostgreSQL their own (`ix_ticket_open_clock`, which the planning reads next, so read
    once from disk); on SQLite the one by tenant and deadline, each deadline with every
    open status (a group no ticket is in costs a few unused pieces)."""
    connection = await session.connection()
    postgres = connection.dialect.name == "postgresql"
    tenant, status, due_at = _TICKET.c.tenant, _TICKET.c.status, _TICKET.c.due_at
    if scope.tenants is None:
        query = scope.select(postgres, tenant, status, due_at)
        return [Group(*row) for row in await connection.execute(query.distinct())]
    if postgres:
        query = sa.select(tenant, status, due_at).where(tenant.in_(scope.tenants), ACTIVE_SQL)
        return [Group(*row) for row in await connection.execute(query.distinct())]
    query = sa.select(tenant, due_at).where(tenant.in_(scope.tenants), ACTIVE_SQL)
    found = await connection.execute(query.distinct())
    return [Group(slug, str(s), due) for slug, due in found for s in ACTIVE_STATUSES]


_PIECE = sa.Table(  # `Piece`s, joined to each ticket by (tenant, status, deadline)
    "clock_piece",
    sa.MetaData(),
    sa.Column("tenant", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("due_at", _NEXT_TYPE),  # NEVER for none: a join key
    sa.Column("set_after", _NEXT_TYPE),
    sa.Column("set_upto", _NEXT_TYPE),
    sa.Column("next_at", _NEXT_TYPE),
    sa.Column("reminder_kind", sa.Text),
    sa.Column("reminder_slot", sa.Text),
    sa.Column("reminder_at", _NEXT_TYPE),
    sa.Column("reminder_late", sa.Boolean),
    sa.Column("nudge_at", sa.Float),  # seconds
    sa.Column("nudge_until", sa.Float),
    sa.Column("expires_from", sa.Float),
    sa.Index("clock_piece_key", "tenant", "status", "due_at"),
    prefixes=["TEMPORARY"],
)


class _Place(sa.types.UserDefinedType[Any]):
    """PostgreSQL's `tid`, where a row version lies (SQLite takes the name and stores NULL)."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "tid"


_PLAN = sa.Table(  # each ticket's plan, worked out once for the claims and the looks
    "clock_plan",
    sa.MetaData(),
    sa.Column("id", sa.Integer),
    sa.Column("version", sa.BigInteger),  # the clock row as read (PostgreSQL)
    sa.Column("place", _Place),
    sa.Column("tenant", sa.Text),
    sa.Column("assignee_user_id", sa.BigInteger),
    sa.Column("due_at", _NEXT_TYPE),
    sa.Column("reminder_kind", sa.Text),
    sa.Column("reminder_slot", sa.Text),
    sa.Column("reminder_at", _NEXT_TYPE),
    sa.Column("reminder_late", sa.Boolean),
    sa.Column("claim", sa.Boolean),
    sa.Column("next_at", _NEXT_TYPE),
    prefixes=["TEMPORARY"],
)
# PostgreSQL's row version (the transaction that wrote it), as a number to compare
_VERSION = "CAST(CAST({}.xmin AS text) AS bigint)"
# Where that version lies: the row as read is found again there, not by its key (100,000
# look-ups in the primary key index: 0.2 s of a 0.7 s policy change, bench/README.md)
_PLACE = "{}.ctid"
# Memory for the statement's hash joins (PostgreSQL): at 100,000 tickets the default 4 MB
# sent them to temporary files
_WORK_MEM = "64MB"


@dataclass(frozen=True, slots=True)
class Planned:
    """What `plan_groups` did: how many next looks it changed, the reminders it claimed."""

    written: int
    claimed: list[Claim]


async def plan_groups(
    session: AsyncSession,
    scope: Scope,
    pieces: Sequence[Piece],
    *,
    now: datetime,
    claim: bool = False,
) -> Planned:
    """Give every ticket in `scope` that a piece covers its next look, in one UPDATE: how
    many looks it wrote (one that stays is not written: after a policy change, most of
    them). The pieces, and then each ticket's plan, are worked out into scratch tables.

    With `claim`, the reminders the plans have due now are first claimed in one INSERT
    (`Claim`, for the caller to queue in the same transaction), and the next look is the
    one after them. Not those of a ticket whose expiry may have come (its plan may be to
    expire, and nothing else): its look is now, for the pass to make alone. Claims come
    before looks, as in a batch (`claim_many`, then `set_next`): two passes meet on a
    claim and one of them waits there, never each on the other's rows.

    Rows older than migration 0014 are unplanned instead, for the ticket-at-a-time pass.
    Tickets no piece covers (a tenant not loaded, or whose deadlines move while tickets
    wait) keep their next look. On PostgreSQL a clock row written since the plans were
    read (a desk action changed the ticket's status or deadline, and its trigger
    unplanned it) is left as it is now: the plan was made from the old facts. (A reminder
    claimed from them went out as the change came in, as it could have a moment before.)"""
    if not pieces:
        return Planned(0, [])
    connection = await session.connection()
    postgres = connection.dialect.name == "postgresql"
    for table in (_PIECE, _PLAN):
        await connection.run_sync(table.drop, checkfirst=True)
        await connection.run_sync(table.create)
    await connection.execute(sa.insert(_PIECE), [_piece_row(item) for item in pieces])
    if postgres:  # no autovacuum for a temporary table: without statistics the planner
        await connection.exec_driver_sql("ANALYZE clock_piece")  # looped over the pieces
        await connection.exec_driver_sql(f"SET LOCAL work_mem = '{_WORK_MEM}'")
    planned = _planned(scope, now, postgres, claim)
    await connection.execute(
        sa.insert(_PLAN).from_select(list(planned.selected_columns.keys()), planned)
    )
    claimed = await _claim(connection, now) if claim else []
    result = await connection.execute(_looks(postgres))
    written = result.rowcount
    if written < 0:  # Python's sqlite3 counts rows only for statements that begin with UPDATE
        written = (await connection.exec_driver_sql("SELECT changes()")).scalar_one()
    for table in (_PLAN, _PIECE):
        await connection.run_sync(table.drop)
    return Planned(int(written), claimed)


_CLAIM_COLUMNS = ["ticket_id", "kind", "anchor_at", "slot", "due_at", "sent_at", "late"]


async def _claim(connection: AsyncConnection, now: datetime) -> list[Claim]:
    """Claim the reminders the plans say go now (one INSERT), and return them as claimed
    with their owners: a claim another process holds is not ours to send."""
    plan = _PLAN.c
    insert = (
        _insert_for(connection.dialect.name)(_SENT)
        .from_select(
            _CLAIM_COLUMNS,
            sa.select(
                plan.id,
                plan.reminder_kind,
                plan.due_at,
                plan.reminder_slot,
                plan.reminder_at,
                sa.literal(now, _SENT.c.sent_at.type),
                plan.reminder_late,
            )
            .where(plan.claim)
            .order_by(plan.id),  # two passes that meet wait in one order: no deadlock
        )
        .on_conflict_do_nothing(index_elements=["ticket_id", "kind", "anchor_at", "slot"])
        .returning(_SENT.c.ticket_id)  # a ticket has one reminder at most to claim at once
    )
    # `.all()`: one fetch of the whole list (iterating fetched row by row: 0.2 s a catch-up)
    ours = set((await connection.execute(insert)).scalars().all())
    if not ours:
        return []
    # times as stored, each distinct one converted once: tickets share deadlines (most end
    # a local day) and a piece's reminder time (SQLite parses each from text otherwise)
    dialect = connection.dialect
    process = _NEXT_TYPE.dialect_impl(dialect).result_processor(dialect, None) or _same
    times: dict[Any, datetime] = {}

    def when(stored: Any) -> datetime:
        found = times.get(stored)
        if found is None:
            found = times[stored] = process(stored)
        return found

    claims = await connection.execute(
        sa.select(
            plan.id,
            plan.reminder_kind,
            sa.type_coerce(plan.due_at, sa.types.NullType),
            plan.reminder_slot,
            sa.type_coerce(plan.reminder_at, sa.types.NullType),
            plan.reminder_late,
            plan.tenant,
            plan.assignee_user_id,
        ).where(plan.claim)
    )
    return [
        Claim(ticket_id, kind, when(anchor), slot, when(at), late, tenant, assignee)
        for ticket_id, kind, anchor, slot, at, late, tenant, assignee in claims.all()
        if ticket_id in ours
    ]


def _same(value: Any) -> Any:
    return value


def _looks(postgres: bool) -> sa.Update:
    """The UPDATE that writes the plans' looks (one that stays is not written)."""
    plan = _PLAN.c
    update = sa.update(_CLOCK).values(next_at=plan.next_at)
    update = update.where(
        _CLOCK.c.ticket_id == plan.id,
        _CLOCK.c.next_at.is_distinct_from(plan.next_at),
    )
    if postgres:  # the row as read, unless written since: by a change whose plan this is not
        update = update.where(
            sa.literal_column(_PLACE.format(_CLOCK.name)) == plan.place,
            plan.version == sa.literal_column(_VERSION.format(_CLOCK.name)),
        )
    return update


def _piece_row(item: Piece) -> dict[str, Any]:
    kind, slot, at = item.reminder or (None, None, None)
    spans = {
        "nudge_at": item.nudge_at,
        "nudge_until": item.nudge_until,
        "expires_from": item.expires_from,
    }
    return {
        "tenant": item.group.tenant,
        "status": item.group.status,
        "due_at": item.group.due_at or NEVER,
        "set_after": item.set_after,
        "set_upto": item.set_upto,
        "next_at": item.next_at,
        "reminder_kind": kind,
        "reminder_slot": slot,
        "reminder_at": at,
        "reminder_late": item.late,
        **{k: None if v is None else v.total_seconds() for k, v in spans.items()},
    }


def _facts(scope: Scope, postgres: bool) -> Any:
    """The columns planning reads of the tickets in `scope` (a subquery's `.c`)."""
    never = sa.literal(NEVER, _NEXT_TYPE)
    # the clock row's version as this statement read it, and where (PostgreSQL)
    version = sa.literal_column(_VERSION.format(_READ.name)) if postgres else sa.null()
    place = sa.literal_column(_PLACE.format(_READ.name)) if postgres else sa.null()
    current = (  # the next look as it is (SQLite: found by the ticket's id)
        _READ.c.next_at
        if postgres
        else sa.select(_CLOCK.c.next_at).where(_CLOCK.c.ticket_id == _TICKET.c.id).scalar_subquery()
    )
    facts_query = scope.select(
        postgres,
        _TICKET.c.id,
        version.label("version"),
        place.label("place"),
        current.label("current"),
        _TICKET.c.tenant,
        _TICKET.c.status,
        _TICKET.c.due_at,
        sa.func.coalesce(_TICKET.c.due_at, never).label("due_key"),
        _SET_AT.label("set_at"),
        _SINCE.label("since"),
        _TICKET.c.history_status.is_not(None).label("kept"),  # else: facts in its history
        _TICKET.c.assignee_user_id,
    )
    # PostgreSQL: read first, then hash-joined to the pieces (joined as they are, its
    # planner looped over the pieces or merge-joined them, 3-4 s for 25,000 tickets);
    # SQLite reads each ticket by id and finds its piece on the scratch table's index
    return (
        facts_query.cte("facts").prefix_with("MATERIALIZED")
        if postgres
        else facts_query.subquery("facts")
    ).c


def _piece_of(facts: Any) -> sa.ColumnElement[bool]:
    """The piece that plans a ticket: its group, and the span its deadline was set in."""
    piece = _PIECE.c
    return sa.and_(
        piece.tenant == facts.tenant,
        piece.status == facts.status,
        piece.due_at == facts.due_key,
        sa.or_(piece.set_after.is_(None), piece.set_after < facts.set_at),
        sa.or_(piece.set_upto.is_(None), piece.set_upto >= facts.set_at),
    )


def _sent(facts: Any) -> sa.Exists:
    """Whether the ticket's piece's reminder due now was sent (claimed) already."""
    piece = _PIECE.c
    return sa.exists().where(
        _SENT.c.ticket_id == facts.id,
        _SENT.c.kind == piece.reminder_kind,
        _SENT.c.anchor_at == facts.due_at,
        _SENT.c.slot == piece.reminder_slot,
    )


def _planned(scope: Scope, now: datetime, postgres: bool, claim: bool) -> sa.Select[Any]:
    """Each ticket's next look, the earliest of its piece's deadline look (the time of its
    reminder due now while that is not sent or, with `claim`, claimed with it), its nudge
    and its expiry; and whether its reminder is to be claimed now (`claim`)."""
    never = sa.literal(NEVER, _NEXT_TYPE)
    facts, piece = _facts(scope, postgres), _PIECE.c
    expiry = sa.func.coalesce(_plus(facts.since, piece.expires_from, postgres), never)
    # its reminder goes now, unless sent already: kept facts, and no expiry that may have come
    goes = (
        sa.and_(facts.kept, piece.reminder_kind.is_not(None), expiry > now) if claim else sa.false()
    )
    looks = [
        sa.case(
            (piece.reminder_kind.is_(None), piece.next_at),
            (goes, piece.next_at),
            (_sent(facts), piece.next_at),
            else_=piece.reminder_at,
        ),
        sa.case(
            (
                _plus(facts.since, piece.nudge_until, postgres) > now,
                _plus(facts.since, piece.nudge_at, postgres),
            ),
            else_=never,
        ),
        expiry,
    ]
    earliest = sa.func.least(*looks) if postgres else sa.func.min(*looks)
    next_at = sa.type_coerce(sa.case((facts.kept, earliest)), _NEXT_TYPE)
    every = (
        sa.select(
            facts.id,
            facts.version,
            facts.place,
            facts.tenant,
            facts.assignee_user_id,
            facts.due_at,
            piece.reminder_kind,
            piece.reminder_slot,
            piece.reminder_at,
            piece.reminder_late,
            sa.and_(goes, ~_sent(facts)).label("claim") if claim else sa.false().label("claim"),
            next_at.label("next_at"),
            facts.current,
        )
        .join_from(facts.id.table, _PIECE, _piece_of(facts))
        .offset(0 if postgres else None)  # each look worked out once (PostgreSQL)
        .subquery("every")
    ).c
    # only what is claimed or changes: after a policy change, a few in a hundred
    return sa.select(*(every[column.name] for column in _PLAN.c)).where(
        sa.or_(every.claim, every.current.is_distinct_from(every.next_at))
    )


def _plus(moment: Any, seconds: Any, postgres: bool) -> Any:
    """`moment` + `seconds` in SQL (NULL if either is), as the column stores times."""
    if postgres:
        return moment + seconds * sa.literal_column("interval '1 second'")
    # SQLite's text form, to the millisecond (earlier by < 1 ms, never later)
    modifier = sa.literal("+") + sa.type_coerce(seconds, sa.Text) + sa.literal(" seconds")
    return sa.func.strftime("%Y-%m-%d %H:%M:%f", moment, modifier)  # NULL || … is NULL
