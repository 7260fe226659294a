"""The tamper-evident history: every change to a ticket's past is found, on both databases,
and `rightsdesk verify-history` says so with a non-zero exit."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import history, tickets
from storage.db import SessionFactory, transaction
from storage.enums import TicketStatus
from storage.models import Ticket, TicketEvent
from tests.test_cli import rightsdesk

WHEN = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


async def _new_ticket(session: AsyncSession, status: TicketStatus = TicketStatus.OPEN) -> Ticket:
    return await tickets.create_ticket(
        session,
        tenant="od",
        ref_prefix="OD",
        kind="erasure",
        channel="whatsapp",
        received_at=WHEN,
        status=status,
    )


async def _ticket_with_history(sessions: SessionFactory, events: int = 4) -> str:
    async with transaction(sessions) as session:
        ticket = await _new_ticket(session)
        for n in range(1, events):
            await tickets.add_event(
                session,
                ticket,
                actor=f"staff:{100 + n}",
                kind="note",
                at=WHEN + timedelta(minutes=n),
                data={"text": f"note {n}", "n": n, "nested": {"ü": [1, 2.5, None]}},
            )
        return ticket.ref


async def _verify(sessions: SessionFactory) -> list[str]:
    async with sessions() as session:
        _checked, found = await history.verify(session)
    return [str(f) for f in found]


async def _event_ids(sessions: SessionFactory, ref: str) -> list[int]:
    async with sessions() as session:
        ticket = await tickets.by_ref(session, ref)
        assert ticket is not None and ticket.id is not None
        return [e.id for e in await tickets.events_of(session, ticket.id) if e.id is not None]


async def _execute(sessions: SessionFactory, statement: sa.Executable) -> None:
    async with transaction(sessions) as session:
        await session.exec(statement)  # type: ignore[call-overload]


async def test_an_untouched_history_verifies(sessions: SessionFactory) -> None:
    first = await _ticket_with_history(sessions)
    await _ticket_with_history(sessions, events=1)
    assert await _verify(sessions) == []
    async with sessions() as session:
        ticket = await tickets.by_ref(session, first)
        assert ticket is not None and ticket.id is not None
        events = await tickets.events_of(session, ticket.id)
    assert events[0].prev_hash is None
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert ticket.history_head == events[-1].hash


async def test_a_changed_event_is_found(sessions: SessionFactory) -> None:
    ref = await _ticket_with_history(sessions)
    second = (await _event_ids(sessions, ref))[1]
    table = TicketEvent.__table__  # type: ignore[attr-defined]
    await _execute(
        sessions,
        sa.update(table).where(table.c.id == second).values(data={"text": "something else"}),
    )
    assert await _verify(sessions) == [f"{ref}: event {second}: was changed after it was written"]


async def test_a_changed_actor_or_time_is_found(sessions: SessionFactory) -> None:
    ref = await _ticket_with_history(sessions)
    ids = await _event_ids(sessions, ref)
    table = TicketEvent.__table__  # type: ignore[attr-defined]
    await _execute(sessions, sa.update(table).where(table.c.id == ids[1]).values(actor="admin:1"))
    await _execute(
        sessions,
        sa.update(table).where(table.c.id == ids[2]).values(at=WHEN - timedelta(days=1)),
    )
    found = await _verify(sessions)
    assert f"{ref}: event {ids[1]}: was changed after it was written" in found
    assert f"{ref}: event {ids[2]}: was changed after it was written" in found


async def test_a_removed_event_is_found_anywhere(sessions: SessionFactory) -> None:
    middle = await _ticket_with_history(sessions)
    last = await _ticket_with_history(sessions)
    table = TicketEvent.__table__  # type: ignore[attr-defined]
    middle_ids = await _event_ids(sessions, middle)
    last_ids = await _event_ids(sessions, last)
    await _execute(sessions, sa.delete(table).where(table.c.id == middle_ids[1]))
    await _execute(sessions, sa.delete(table).where(table.c.id == last_ids[-1]))
    assert await _verify(sessions) == [
        f"{middle}: event {middle_ids[2]}: an event before it was removed",
        f"{last}: history: its newest event was removed or replaced",
    ]


async def test_an_event_moved_to_another_ticket_is_found(sessions: SessionFactory) -> None:
    one = await _ticket_with_history(sessions)
    other = await _ticket_with_history(sessions)
    moved = (await _event_ids(sessions, one))[-1]
    async with sessions() as session:
        target = await tickets.by_ref(session, other)
        assert target is not None
    table = TicketEvent.__table__  # type: ignore[attr-defined]
    await _execute(
        sessions, sa.update(table).where(table.c.id == moved).values(ticket_id=target.id)
    )
    found = await _verify(sessions)
    assert f"{one}: history: its newest event was removed or replaced" in found
    assert f"{other}: event {moved}: was changed after it was written" in found


async def test_redaction_keeps_the_chain_and_removes_the_data(sessions: SessionFactory) -> None:
    ref = await _ticket_with_history(sessions)
    ids = await _event_ids(sessions, ref)
    async with transaction(sessions) as session:
        event = (await session.exec(select(TicketEvent).where(TicketEvent.id == ids[1]))).one()
        event.data = history.redacted(event.data)
        session.add(event)
    assert await _verify(sessions) == []
    async with sessions() as session:
        rows = list(await session.exec(select(TicketEvent).order_by(col(TicketEvent.id))))
    assert "note 1" not in str([r.data for r in rows])


async def test_verify_history_command(tmp_path: Path, database_url: str, sessions: SessionFactory):
    ref = await _ticket_with_history(sessions)
    env = {"DATABASE_URL": database_url}
    clean = rightsdesk("verify-history", cwd=tmp_path, env=env)
    assert clean.returncode == 0, clean.stderr
    assert "1 tickets checked, 0 problems" in clean.stderr
    table = Ticket.__table__  # type: ignore[attr-defined]
    await _execute(sessions, sa.update(table).values(history_head="0" * 64))
    broken = rightsdesk("verify-history", "--tenant", "od", cwd=tmp_path, env=env)
    assert broken.returncode == 1
    assert broken.stdout.strip() == f"{ref}: history: its newest event was removed or replaced"


async def test_the_row_keeps_the_summary_of_its_history(sessions: SessionFactory) -> None:
    """Every event folds into the summary on the ticket row (what the clock plans from),
    as if the whole history were read; a row that disagrees with its events is found."""
    steps: list[tuple[str, dict[str, object]]] = [
        ("verified", {"status": "open", "due_at": "2026-03-31T18:59:59+00:00"}),
        ("claimed", {"status": "in_progress"}),
        ("note", {"text": "called the branch"}),
        ("asked", {"status": "awaiting_requester"}),
        ("answered", {"status": "in_progress"}),
        ("claimed", {"status": "in_progress"}),  # the same status again: its run goes on
        ("extended", {"due_at": "2026-05-31T18:59:59+00:00", "reason": "complex"}),
    ]
    async with transaction(sessions) as session:
        ticket = await _new_ticket(session, TicketStatus.AWAITING_VERIFICATION)
        assert ticket.id is not None
        kept = [history.Summary("awaiting_verification", WHEN, None)]
        for n, (kind, data) in enumerate(steps, start=1):
            await tickets.add_event(
                session, ticket, actor="staff:7", kind=kind, at=WHEN + timedelta(hours=n), data=data
            )
            kept.append(history.Summary.kept_on(ticket))
        ticket_id, ref = ticket.id, ticket.ref
    hour = [WHEN + timedelta(hours=n) for n in range(len(steps) + 1)]
    assert [(k.status, k.status_at, k.due_set_at) for k in kept] == [
        ("awaiting_verification", hour[0], None),
        ("open", hour[1], hour[1]),
        ("in_progress", hour[2], hour[1]),
        ("in_progress", hour[2], hour[1]),
        ("awaiting_requester", hour[4], hour[1]),
        ("in_progress", hour[5], hour[1]),
        ("in_progress", hour[5], hour[1]),
        ("in_progress", hour[5], hour[7]),
    ]
    async with sessions() as session:
        row = await session.get(Ticket, ticket_id)
        assert row is not None
        events = await tickets.events_of(session, ticket_id)
    assert history.summarize(events) == kept[-1]
    assert (row.history_status, row.history_status_at, row.history_due_set_at) == (
        "in_progress", hour[5], hour[7]
    )  # fmt: skip
    assert await _verify(sessions) == []

    table = Ticket.__table__  # type: ignore[attr-defined]
    await _execute(
        sessions, sa.update(table).where(table.c.id == ticket_id).values(history_status_at=WHEN)
    )
    assert await _verify(sessions) == [
        f"{ref}: history: the summary on its row differs from its events"
    ]


async def test_a_ticket_without_a_summary_gets_none_from_new_events(
    sessions: SessionFactory,
) -> None:
    """A ticket from before the summary was kept (its columns empty) is not given one from
    its newest events alone: the clock reads its whole history instead."""
    ref = await _ticket_with_history(sessions, events=2)
    table = Ticket.__table__  # type: ignore[attr-defined]
    await _execute(
        sessions,
        sa.update(table)
        .where(table.c.ref == ref)
        .values(history_status=None, history_status_at=None),
    )
    async with transaction(sessions) as session:
        ticket = await tickets.by_ref(session, ref)
        assert ticket is not None
        await tickets.add_event(
            session, ticket, actor="staff:7", kind="claimed", at=WHEN + timedelta(days=1),
            data={"status": "in_progress"},
        )  # fmt: skip
    async with sessions() as session:
        row = await tickets.by_ref(session, ref)
    assert row is not None and (row.history_status, row.history_status_at) == (None, None)
    assert await _verify(sessions) == []
