"""The ticket list's queries: deadline order, keyset pages that never skip or repeat a row,
every filter, counts per status, and query plans that stay index range scans."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.api_models import admin_filter, decode_cursor, encode_cursor, search_terms
from bot.tenants import load_tenants
from storage import admin_queries as q
from storage.admin_models import TicketStatusCount
from storage.db import SessionFactory, create_engine, session_factory, transaction
from storage.enums import TicketStatus
from storage.models import Ticket
from tests.conftest import TENANTS_DIR
from tests.test_admin_support import Seed, seed

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
STATUSES = list(TicketStatus)
KINDS = ["access", "erasure", "rectification", "complaint"]


async def _bulk(engine: AsyncEngine, count: int, *, seed_value: int = 7, first: int = 1) -> None:
    """`count` tickets with varied statuses, tenants, kinds and deadlines (ties included)."""
    rng = random.Random(seed_value)
    tenants = [("optician-dynamics", "OD"), ("jooptics", "JOO"), ("optimizory", "OPT")]
    values = []
    for n in range(first, first + count):
        tenant, prefix = rng.choice(tenants)
        due = (
            None
            if rng.random() < 0.1
            else NOW + timedelta(hours=rng.randint(-24 * 30, 24 * 60) // 6 * 6)
        )
        status = rng.choice(STATUSES)
        values.append(
            {
                "tenant": tenant,
                "ref": f"{prefix}-2026-{n:06d}",
                "year": 2026,
                "seq": n,
                "kind": rng.choice(KINDS),
                "status": status,
                "channel": rng.choice(["whatsapp", "telegram"]),
                "language": "en",
                "received_at": NOW - timedelta(days=rng.randint(0, 60)),
                "due_at": due,
                "closed_at": NOW if status in ("resolved", "rejected") else None,
                "assignee_user_id": rng.choice([None, 111, 222]),
                "created_at": NOW,
                "updated_at": NOW,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(sa.insert(Ticket.__table__), values)  # type: ignore[attr-defined]


def _order(ticket: Ticket) -> tuple[int, datetime, int]:
    far = datetime.max.replace(tzinfo=UTC)
    assert ticket.id is not None
    return (ticket.due_at is None, ticket.due_at or far, ticket.id)


async def _walk(sessions: SessionFactory, f: q.TicketFilter, limit: int) -> list[Ticket]:
    seen: list[Ticket] = []
    cursor = None
    async with sessions() as session:
        while True:
            page, nxt = await q.page_tickets(session, f, now=NOW, limit=limit, after=cursor)
            assert len(page) <= limit
            seen.extend(page)
            if nxt is None:
                return seen
            # The cursor survives the opaque round trip the API and the pages make.
            cursor = decode_cursor(encode_cursor(nxt))


async def _all(sessions: SessionFactory) -> list[Ticket]:
    async with sessions() as session:
        return list(await session.exec(sa.select(Ticket)))  # type: ignore[call-overload]


@pytest.mark.parametrize("limit", [1, 7, 50])
async def test_keyset_pages_cover_everything_in_deadline_order(
    engine: AsyncEngine, sessions: SessionFactory, limit: int
) -> None:
    await _bulk(engine, 300)
    everything = sorted([row[0] for row in await _all(sessions)], key=_order)
    walked = await _walk(sessions, q.TicketFilter(), limit)
    assert [t.id for t in walked] == [t.id for t in everything]


FILTERS = {
    "tenant": (
        q.TicketFilter(tenant="jooptics"),
        lambda t: t.tenant == "jooptics",
    ),
    "status": (q.TicketFilter(status="open"), lambda t: t.status == "open"),
    "active": (
        q.TicketFilter(active=True),
        lambda t: t.status in q.ACTIVE_STATUSES,
    ),
    "closed": (
        q.TicketFilter(active=False),
        lambda t: t.status not in q.ACTIVE_STATUSES,
    ),
    "kind+channel": (
        q.TicketFilter(kind="erasure", channel="telegram"),
        lambda t: t.kind == "erasure" and t.channel == "telegram",
    ),
    "assignee": (q.TicketFilter(assignee=111), lambda t: t.assignee_user_id == 111),
    "unassigned": (q.TicketFilter(unassigned=True), lambda t: t.assignee_user_id is None),
    "overdue": (
        q.TicketFilter(overdue=True),
        lambda t: t.status in q.ACTIVE_STATUSES and t.due_at is not None and t.due_at < NOW,
    ),
    "due within 3 days": (
        q.TicketFilter(due_within=timedelta(days=3), tenant="optimizory"),
        lambda t: (
            t.status in q.ACTIVE_STATUSES
            and t.tenant == "optimizory"
            and t.due_at is not None
            and NOW <= t.due_at <= NOW + timedelta(days=3)
        ),
    ),
    "tenant+active": (
        q.TicketFilter(tenant="optician-dynamics", active=True),
        lambda t: t.tenant == "optician-dynamics" and t.status in q.ACTIVE_STATUSES,
    ),
    "ref": (q.TicketFilter(ref="OD-2026-000010"), lambda t: t.ref == "OD-2026-000010"),
}


@pytest.mark.parametrize("name", list(FILTERS))
async def test_filters_page_and_count_like_python_says(
    engine: AsyncEngine, sessions: SessionFactory, name: str
) -> None:
    await _bulk(engine, 250)
    f, wanted = FILTERS[name]
    everything = [row[0] for row in await _all(sessions)]
    expected = sorted([t for t in everything if wanted(t)], key=_order)
    walked = await _walk(sessions, f, 20)
    assert [t.id for t in walked] == [t.id for t in expected]
    async with sessions() as session:
        counts = await q.count_by_status(session, f, now=NOW)
    # Counts leave the status filter out, so each status chip says what it would show.
    unfiltered = f.without_status()
    for status in TicketStatus:
        found = await _walk(
            sessions, q.TicketFilter(**{**_fields(unfiltered), "status": status}), 100
        )
        assert counts.get(status, 0) == len(found), status


async def _counted(sessions: SessionFactory) -> dict[str | None, dict[str, int]]:
    """What the list's counters say, for all tenants and for each one."""
    async with sessions() as session:
        return {
            tenant: await q.count_by_status(session, q.TicketFilter(tenant=tenant), now=NOW)
            for tenant in (None, "optician-dynamics", "jooptics", "optimizory")
        }


async def _truth(sessions: SessionFactory) -> dict[str | None, dict[str, int]]:
    """The same, counted ticket by ticket."""
    truth: dict[str | None, dict[str, int]] = {
        t: {} for t in (None, "optician-dynamics", "jooptics", "optimizory")
    }
    for (ticket,) in await _all(sessions):
        for key in (None, ticket.tenant):
            truth[key][ticket.status] = truth[key].get(ticket.status, 0) + 1
    return truth


async def test_counts_follow_every_change_and_survive_folding(
    engine: AsyncEngine, sessions: SessionFactory
) -> None:
    await _bulk(engine, 120)
    assert await _counted(sessions) == await _truth(sessions)
    async with transaction(sessions) as session:
        tickets = [row[0] for row in await session.exec(sa.select(Ticket).order_by(Ticket.id))]  # type: ignore[call-overload, arg-type]
        for ticket in tickets[:30]:
            ticket.status = TicketStatus.RESOLVED if ticket.status != "resolved" else "open"
        tickets[30].tenant = "optimizory" if tickets[30].tenant != "optimizory" else "jooptics"
        tickets[31].status = tickets[31].status  # no change: no delta
        for ticket in tickets[40:45]:
            await session.delete(ticket)
    assert await _counted(sessions) == await _truth(sessions)

    async with transaction(sessions) as session:
        folded = await q.compact_counts(session)
    assert folded >= 120 + 2 * 31 + 5
    async with sessions() as session:
        rows = (await session.exec(sa.select(sa.func.count()).select_from(TicketStatusCount))).one()  # type: ignore[call-overload]
    assert rows[0] <= 3 * len(STATUSES)  # one row per (tenant, status) at most
    assert await _counted(sessions) == await _truth(sessions)

    await _bulk(engine, 10, seed_value=8, first=1000)
    async with transaction(sessions) as session:
        assert await q.compact_counts(session) > 0
        assert await q.compact_counts(session) <= 3 * len(STATUSES)  # already folded
    assert await _counted(sessions) == await _truth(sessions)


@pytest_asyncio.fixture
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url)
    yield engine
    await engine.dispose()


async def _counts_table_bytes(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        size = await conn.scalar(sa.text("SELECT pg_relation_size('ticket_status_count')"))
    return int(size)


async def test_a_grown_counts_table_is_folded_into_a_new_file(pg_engine: AsyncEngine) -> None:
    sessions = session_factory(pg_engine)
    await _bulk(pg_engine, 600)
    truth = await _truth(sessions)
    async with transaction(sessions) as session:  # a table below the size: folded in place
        assert await q.compact_counts(session) == 600
    kept = await _counts_table_bytes(pg_engine)
    assert kept > 8192  # the deleted deltas' pages stay in the file
    assert await _counted(sessions) == truth

    await _bulk(pg_engine, 300, seed_value=9, first=1000)
    async with sessions() as session:
        totals = (
            await session.exec(sa.select(sa.func.count()).select_from(TicketStatusCount))
        ).one()  # type: ignore[call-overload]
    truth = await _truth(sessions)
    async with transaction(sessions) as session:
        folded = await q.compact_counts(session, rewrite_above=8192)
    assert folded == totals[0] > 300  # the new deltas and the previous totals
    assert await _counts_table_bytes(pg_engine) == 8192  # one page: ≤ 3 × 8 totals
    assert await _counted(sessions) == truth


async def test_folding_into_a_new_file_neither_waits_for_writers_nor_loses_them(
    pg_engine: AsyncEngine,
) -> None:
    sessions = session_factory(pg_engine)
    await _bulk(pg_engine, 200)
    # A writer holds the table (its delta not yet committed): the fold does not wait for
    # it, folds in place instead, and leaves its delta alone.
    async with pg_engine.connect() as writer:
        await writer.execute(sa.insert(Ticket.__table__), [_one_ticket(5000)])  # type: ignore[attr-defined]
        async with transaction(sessions) as session:
            folded = await asyncio.wait_for(q.compact_counts(session, rewrite_above=0), 10)
        assert folded == 200
        await writer.commit()
    assert await _counted(sessions) == await _truth(sessions)

    # The fold holds the table: a writer waits for it, and its delta lands in the new file.
    async with transaction(sessions) as session:
        assert await q.compact_counts(session, rewrite_above=0) > 0
        late = asyncio.create_task(_insert_ticket(pg_engine, 5001))
        await asyncio.sleep(0.3)
        assert not late.done()  # queued behind the fold's lock
    await asyncio.wait_for(late, 10)
    assert await _counted(sessions) == await _truth(sessions)


def _one_ticket(n: int) -> dict[str, object]:
    return {
        "tenant": "jooptics",
        "ref": f"JOO-2026-{n:06d}",
        "year": 2026,
        "seq": n,
        "kind": "access",
        "status": "open",
        "channel": "telegram",
        "language": "en",
        "received_at": NOW,
        "due_at": NOW + timedelta(days=3),
        "created_at": NOW,
        "updated_at": NOW,
    }


async def _insert_ticket(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.insert(Ticket.__table__), [_one_ticket(n)])  # type: ignore[attr-defined]


def _fields(f: q.TicketFilter) -> dict[str, object]:
    return {name: getattr(f, name) for name in f.__slots__}  # type: ignore[attr-defined]


async def test_search_by_email_phone_and_telegram_id(
    database_url: str, sessions: SessionFactory
) -> None:
    made = await seed(
        database_url,
        [
            Seed(address="whatsapp:+923001112233", email="amina@example.com"),
            Seed(channel="telegram", address="5550001", tenant="jooptics"),
            Seed(address="whatsapp:+971501234567"),
        ],
    )
    tenants = load_tenants(TENANTS_DIR)
    cases = {
        "Amina@Example.com": made[0].ref,
        "+92 300 111 2233": made[0].ref,
        "whatsapp:+923001112233": made[0].ref,
        "5550001": made[1].ref,
        made[2].ref.lower(): made[2].ref,
    }
    async with sessions() as session:
        for text, ref in cases.items():
            f = admin_filter({"q": text, "status": "all"}, tenants)
            found, _ = await q.page_tickets(session, f, now=NOW, limit=10)
            assert [t.ref for t in found] == [ref], text


def test_search_terms_refuse_what_no_contact_could_be() -> None:
    assert search_terms("OD-2026-00042") == ("OD-2026-00042", None)
    with pytest.raises(ValueError):
        search_terms("hello")


async def test_list_queries_are_index_range_scans(engine: AsyncEngine) -> None:
    """At scale the planner must walk an index in list order, not sort the table."""
    await _bulk(engine, 3000)
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(sa.text("ANALYZE ticket"))
        else:
            await conn.execute(sa.text("ANALYZE"))
    cursor = q.Cursor(NOW, 1500)
    cases = [
        (q.TicketFilter(active=True), None),
        (q.TicketFilter(active=True), cursor),
        (q.TicketFilter(tenant="jooptics", active=True), cursor),
        (q.TicketFilter(status="open"), cursor),
        (q.TicketFilter(), cursor),
        (q.TicketFilter(overdue=True), None),
    ]
    async with engine.connect() as conn:
        for f, after in cases:
            query = q.dated_page(f, now=NOW, limit=51, after=after)
            compiled = query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
            prefix = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
            result = await conn.execute(sa.text(prefix + str(compiled)))
            plan = "\n".join(str(r[-1]) for r in result)
            if engine.dialect.name == "postgresql":
                assert "Index" in plan and "Sort" not in plan and "Seq Scan" not in plan, (f, plan)
            else:
                assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (f, plan)
                assert "TEMP B-TREE" not in plan, (f, plan)
