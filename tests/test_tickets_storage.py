"""Ticket references and history, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from storage import tickets
from storage.db import SessionFactory, session_factory, transaction

WHEN = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


async def _file(sessions: SessionFactory, tenant: str, prefix: str, when: datetime = WHEN) -> str:
    async with transaction(sessions) as session:
        ticket = await tickets.create_ticket(
            session,
            tenant=tenant,
            ref_prefix=prefix,
            kind="access",
            channel="whatsapp",
            received_at=when,
        )
        return ticket.ref


async def test_references_are_sequential_per_tenant_and_year(sessions: SessionFactory) -> None:
    assert await _file(sessions, "od", "OD") == "OD-2026-00001"
    assert await _file(sessions, "od", "OD") == "OD-2026-00002"
    assert await _file(sessions, "joo", "JOO") == "JOO-2026-00001"
    assert await _file(sessions, "od", "OD", WHEN + timedelta(days=365)) == "OD-2027-00001"
    assert await _file(sessions, "od", "OD") == "OD-2026-00003"


async def test_concurrent_filings_never_share_a_reference(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    refs = await asyncio.gather(*(_file(sessions, "od", "OD") for _ in range(25)))
    assert len(set(refs)) == 25
    numbers = sorted(int(ref.rsplit("-", 1)[1]) for ref in refs)
    assert numbers == list(range(1, 26))
    assert all(re.fullmatch(r"OD-2026-\d{5}", ref) for ref in refs)


async def test_history_starts_with_creation_and_keeps_order(sessions: SessionFactory) -> None:
    async with transaction(sessions) as session:
        ticket = await tickets.create_ticket(
            session,
            tenant="od",
            ref_prefix="OD",
            kind="erasure",
            channel="telegram",
            received_at=WHEN,
        )
        await tickets.add_event(
            session, ticket, actor="staff:111", kind="claimed", at=WHEN + timedelta(minutes=5)
        )
    async with sessions() as session:
        found = await tickets.by_ref(session, ticket.ref)
        assert found is not None and found.received_at == WHEN
        assert found.received_at.tzinfo is not None
        events = await tickets.events_of(session, found.id or 0)
    assert [(e.kind, e.actor) for e in events] == [
        ("created", "customer"),
        ("claimed", "staff:111"),
    ]
    assert events[0].data == {"status": "open", "type": "erasure", "channel": "telegram"}
    assert events[1].at == WHEN + timedelta(minutes=5)
