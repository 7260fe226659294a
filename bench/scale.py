"""A million tickets: the admin list and API queries, a scheduler pass, `serve`'s memory.

For each database (a SQLite file; a fresh PostgreSQL database), migrated with
`rightsdesk migrate`, this:

1. generates N tickets (default 1,000,000) with realistic spreads — the three shipped
   tenants (60/25/15 %), the request types each offers (opt-outs most common), three
   years of history, 90 % closed (resolved, rejected, cancelled, expired), 10 % active
   (open, in progress, awaiting verification or the requester; some overdue, some
   assigned), a `created` event per ticket and a `verified` one for verified active tickets —
   with PostgreSQL COPY or SQLite executemany in one transaction;
2. times the list queries, each page 50 rows: first page, filtered pages (tenant + status,
   type, overdue, assignee), and a deep page by cursor (the page after row 500,000).
   When the admin pages and API exist (`/admin/tickets`, `/api/v1/tickets` answer on a
   running `serve`), they are timed over HTTP; the query functions of
   `storage.admin_queries` are timed in-process when that module exists; plain keyset SQL
   otherwise. Which one ran is in the output;
3. times `ReminderPass.run()` (the scheduler's pass) over the 100,000 active tickets, cold
   (none planned yet: each is planned) and warm (all planned, nothing due);
4. starts `serve` on that database with the fakes and reports its resident memory after its
   own first scheduler pass and the list requests.

    .venv/bin/python -m bench.scale [--quick] [--tickets N] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

import tests.conftest  # noqa: F401  (configures the keyring and DATA_KEYS as the tests do)
from bench.common import (
    ROOT,
    collector_paused,
    create_pg_database,
    drop_pg_database,
    emit,
    hwm_mb,
    pg_available,
    pg_dsn,
    pg_url,
    rightsdesk_migrate,
    rss_mb,
    start_profile,
    summarize_profile,
    summary_ms,
    table,
    write_json,
)
from bot.clock import add_duration
from bot.reminders import tenant_calendar
from bot.tenants import load_tenants
from storage import crypto
from storage.enums import RequestType
from storage.history import Summary

PAGE = 50
TARGET_P95_MS = 50.0
TARGET_PASS_S = 1.0
TARGET_RSS_MB = 200.0

# slug, ref prefix, share of tickets, request types offered (config/tenants/*.toml)
TENANTS = [
    (
        "optician-dynamics",
        "OD",
        0.60,
        ["access", "rectification", "erasure", "objection", "restriction", "portability",
         "marketing_opt_out", "cookie_opt_out"],
    ),
    (
        "jooptics",
        "JOO",
        0.25,
        ["access", "rectification", "erasure", "portability", "objection",
         "consent_withdrawal", "marketing_opt_out", "complaint"],
    ),
    (
        "optimizory",
        "OPT",
        0.15,
        ["access", "rectification", "erasure", "consent_withdrawal", "marketing_opt_out",
         "complaint"],
    ),
]  # fmt: skip
KIND_WEIGHT = {
    "marketing_opt_out": 30,
    "access": 20,
    "erasure": 18,
    "cookie_opt_out": 8,
    "rectification": 7,
    "complaint": 6,
    "consent_withdrawal": 4,
    "objection": 3,
    "portability": 2,
    "restriction": 2,
}
CLOSED = [("resolved", 80), ("rejected", 6), ("cancelled", 7), ("expired", 7)]
ACTIVE = [("open", 55), ("in_progress", 25), ("awaiting_verification", 12),
          ("awaiting_requester", 8)]  # fmt: skip
OVERDUE_SHARE = 0.08
DEADLINE_DAYS = {"optician-dynamics": 10, "jooptics": 30, "optimizory": 45}
STAFF = [(111, "Amina"), (112, "Bilal"), (113, "Sara"), (114, "Omar"), (115, "Priya")]
# an open ticket's `ticket_clock` row comes from the insert trigger (NULL; a closed one has none)
TICKET_COLUMNS = [
    "id", "tenant", "ref", "year", "seq", "kind", "status", "channel", "language",
    "received_at", "verified_at", "clock_started_at", "due_at", "closed_at",
    "assignee_user_id", "assignee_name", "created_at", "updated_at", "requester_id",
    "history_status", "history_status_at", "history_due_set_at",
]  # fmt: skip
REQUESTER_COLUMNS = ["id", "tenant", "language", "created_at"]
CONVERSATION_COLUMNS = [
    "id", "channel", "address", "address_index", "tenant", "requester_id", "step", "state",
    "language", "last_inbound_at", "updated_at",
]  # fmt: skip
EVENT_COLUMNS = ["ticket_id", "at", "actor", "kind", "data"]


# --- generating ----------------------------------------------------------------------------


@dataclass
class Data:
    """Rows in the column orders above; datetimes aware UTC, JSON as text."""

    tickets: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    requesters: list[tuple[Any, ...]] = field(default_factory=list)
    conversations: list[tuple[Any, ...]] = field(default_factory=list)
    seq: dict[tuple[str, int], int] = field(default_factory=dict)


def generate(
    count: int, active: int, now: datetime, seed: int = 42, *, summaries: bool = True
) -> Data:
    """`count` tickets, ids 1..count in order of receipt; the `active` ones have a
    requester and the conversation the clock writes to them on. Deadlines are the tenants'
    own (`config/tenants`, `bot.clock.add_duration`: most end their local day); each row
    keeps its history's summary as the service's events do (`summaries` False: a database
    from before migration 0014, where the clock reads the histories)."""
    data = Data()
    policies = load_tenants(ROOT / "config" / "tenants")
    rng = random.Random(seed)
    span = timedelta(days=3 * 365)
    first = now - span
    active_ids = set(rng.sample(range(1, count + 1), active))
    tenant_pick = rng.choices(range(len(TENANTS)), [t[2] for t in TENANTS], k=count)
    kinds_of = [[k for k in t[3]] for t in TENANTS]
    weights_of = [[KIND_WEIGHT[k] for k in kinds] for kinds in kinds_of]
    seq = data.seq
    tickets, events = data.tickets, data.events
    step = span / count
    for i in range(1, count + 1):
        slug, prefix, _share, _kinds = TENANTS[tenant_pick[i - 1]]
        kinds, weights = kinds_of[tenant_pick[i - 1]], weights_of[tenant_pick[i - 1]]
        is_active = i in active_ids
        deadline = timedelta(days=DEADLINE_DAYS[slug])
        if is_active:  # within their deadline, OVERDUE_SHARE past it; unverified: < 4 days
            kind = rng.choices(kinds, weights)[0]
            while kind in ("marketing_opt_out", "cookie_opt_out"):  # carried out at once
                kind = rng.choices(kinds, weights)[0]
            status = rng.choices([s for s, _ in ACTIVE], [w for _, w in ACTIVE])[0]
            if status == "awaiting_verification":
                received = now - timedelta(hours=rng.uniform(0.1, 96))
            elif rng.random() < OVERDUE_SHARE:
                received = now - deadline - timedelta(hours=rng.uniform(1, 240))
            else:
                received = now - deadline + timedelta(hours=rng.uniform(2, deadline.days * 24))
        else:
            received = first + step * i + timedelta(seconds=rng.uniform(0, 60))
            kind = rng.choices(kinds, weights)[0]
            status = rng.choices([s for s, _ in CLOSED], [w for _, w in CLOSED])[0]
            if kind == "marketing_opt_out":
                status = "resolved"
        year = received.year
        number = seq[(slug, year)] = seq.get((slug, year), 0) + 1
        ref = f"{prefix}-{year}-{number:05d}"
        verified = status != "awaiting_verification" and kind not in (
            "complaint",
            "marketing_opt_out",
            "cookie_opt_out",
        )
        verified_at = received + timedelta(minutes=rng.uniform(1, 30)) if verified else None
        tenant = policies.by_slug(slug)
        if kind == "marketing_opt_out":
            clock_start: datetime | None = received
            due: datetime | None = received
        elif status == "awaiting_verification":
            clock_start = due = None  # the clock starts on verification
        else:
            clock_start = verified_at or received
            duration = tenant.deadline_for(RequestType(kind))
            assert duration is not None, f"{slug} does not offer {kind}"
            due = add_duration(clock_start, duration, tenant_calendar(tenant))
        closed_at = None
        if not is_active:
            closed_at = received + timedelta(hours=rng.uniform(0.01, 24 * DEADLINE_DAYS[slug]))
        assignee = rng.choice(STAFF) if status in ("in_progress", "resolved", "rejected") else None
        if assignee is None and is_active and rng.random() < 0.2:
            assignee = rng.choice(STAFF)
        channel = "whatsapp" if rng.random() < 0.7 else "telegram"
        language = rng.choices(["en", "ar", "ur"], [70, 20, 10])[0]
        updated = closed_at or verified_at or received
        requester_id = None
        if is_active:
            requester_id = len(data.requesters) + 1
            data.requesters.append((requester_id, slug, language, received))
            address = (
                f"whatsapp:+92301{requester_id:07d}"
                if channel == "whatsapp"
                else str(5_000_000_000 + requester_id)
            )
            data.conversations.append(
                (requester_id, channel, _sealed(address, "conversation.address"),
                 crypto.blind_index(address), slug, requester_id, "start", "{}", language,
                 received, received)
            )  # fmt: skip
        first_status = "awaiting_verification" if verified_at is not None else status
        if not is_active and verified_at is None:
            first_status = "open"
        created = {"status": first_status, "type": kind, "channel": channel}
        events.append((i, received, "customer", "created", _event_data(created)))
        summary = Summary(first_status, received, None)
        if is_active and verified_at is not None:  # the clock reads active histories only
            verified_data = {"status": "open", "due_at": due.isoformat() if due else None}
            events.append((i, verified_at, "customer", "verified", _event_data(verified_data)))
            summary = summary.then(verified_at, verified_data, first=False)
        if not summaries:
            summary = Summary()
        tickets.append(
            (
                i, slug, ref, year, number, kind, status, channel, language,
                received, verified_at, clock_start, due, closed_at,
                assignee[0] if assignee else None, assignee[1] if assignee else None,
                received, updated, requester_id,
                summary.status, summary.status_at, summary.due_set_at,
            )
        )  # fmt: skip
    return data


def _sealed(value: str, context: str) -> str:
    return crypto.keyring().seal(value, context=context)


def _event_data(data: dict[str, Any]) -> str:
    """Event data as the service stores it: sealed (storage.crypto), with the keys the
    tests' configuration puts in the environment of the `serve` it starts."""
    return crypto.keyring().seal(
        json.dumps(data, ensure_ascii=False, separators=(",", ":")), context="ticket_event.data"
    )


# --- loading -----------------------------------------------------------------------------


def _sqlite_ts(value: datetime | None) -> str | None:
    """What SQLAlchemy's SQLite DATETIME stores for rightsdesk's naive-UTC values."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def load_sqlite(path: Path, data: Data) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # the load only; serve sets its own
        conn.execute("PRAGMA cache_size=-400000")
        # secondary indexes are built once after the rows are in (the same end state, faster)
        tables = "('ticket', 'ticket_clock', 'ticket_event', 'requester', 'conversation')"
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN {tables}"
        ).fetchall()
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("BEGIN")

        def rows(source: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
            for row in source:
                yield tuple(_sqlite_ts(v) if isinstance(v, datetime) else v for v in row)

        for name, columns, source in (
            ("requester", REQUESTER_COLUMNS, data.requesters),
            ("conversation", CONVERSATION_COLUMNS, data.conversations),
            ("ticket", TICKET_COLUMNS, data.tickets),
            ("ticket_event", EVENT_COLUMNS, data.events),
        ):
            marks = ", ".join("?" * len(columns))
            conn.executemany(
                f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({marks})", rows(source)
            )
        conn.executemany(
            "INSERT INTO ticket_counter (tenant, year, last) VALUES (?, ?, ?)",
            [(t, y, n) for (t, y), n in data.seq.items()],
        )
        conn.execute("COMMIT")
        for _name, sql in indexes:
            conn.execute(sql)
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def load_postgres(dsn: str, data: Data) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name, columns, source in (
            ("requester", REQUESTER_COLUMNS, data.requesters),
            ("conversation", CONVERSATION_COLUMNS, data.conversations),
            ("ticket", TICKET_COLUMNS, data.tickets),
            ("ticket_event", EVENT_COLUMNS, data.events),
            ("ticket_counter", ["tenant", "year", "last"],
             [(t, y, n) for (t, y), n in data.seq.items()]),
        ):  # fmt: skip
            await conn.copy_records_to_table(name, records=source, columns=columns)
        for name in ("requester", "conversation", "ticket", "ticket_event"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                f"(SELECT coalesce(max(id), 1) FROM {name}))"
            )
        for name in ("requester", "conversation", "ticket", "ticket_clock", "ticket_event"):
            await conn.execute(f"VACUUM ANALYZE {name}")
    finally:
        await conn.close()


async def fold_counts(url: str) -> float | None:
    """Fold the per-status count deltas the load's triggers wrote (one per ticket), as
    `serve`'s clock does every 30 s; how long it took."""
    try:
        from storage.admin_queries import compact_counts
    except ImportError:  # a checkout from before the counts table
        return None
    from storage.db import create_engine, session_factory, transaction

    engine = create_engine(url)
    try:
        started = time.perf_counter()
        async with transaction(session_factory(engine)) as session:
            await compact_counts(session)
        if engine.dialect.name == "postgresql":  # as autovacuum would, soon after
            async with engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql("VACUUM ANALYZE ticket_status_count")
        return round(time.perf_counter() - started, 2)
    finally:
        await engine.dispose()


# --- timing the list -------------------------------------------------------------------------


async def time_calls(call: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Run `call` twice to warm up, then `repeat` times; latency summary."""
    for _ in range(2):
        await call()
    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - started)
    return summary_ms(durations)


def _admin_queries_problem() -> str | None:
    """None when storage.admin_queries imports and has the list query; else why not."""
    try:
        from storage import admin_queries
    except Exception as exc:  # the module is being written: any failure means "not usable"
        return f"storage.admin_queries does not import ({type(exc).__name__}: {exc})"
    if not (hasattr(admin_queries, "page_tickets") and hasattr(admin_queries, "TicketFilter")):
        return "storage.admin_queries has no page_tickets/TicketFilter"
    return None


async def list_queries_in_process(
    database_url: str, now: datetime, repeat: int, deep_offset: int
) -> tuple[dict[str, Any], str | None]:
    """`storage.admin_queries.page_tickets` (what the admin list and the API call); and the
    deep page's cursor as the API and the admin list write it, when they can."""

    from storage import admin_queries as q
    from storage.db import create_engine, session_factory

    engine = create_engine(database_url)
    sessions = session_factory(engine)
    out: dict[str, Any] = {"source": "storage.admin_queries.page_tickets (in-process)"}
    try:
        cursor = await _deep_cursor(sessions, q, now, deep_offset)
        try:
            from bot.api_models import encode_cursor

            encoded: str | None = encode_cursor(cursor)
        except Exception:  # the API is being written: no cursor, the HTTP deep page walks
            encoded = None
        cases: dict[str, tuple[Any, Any]] = {
            "first page": (q.TicketFilter(), None),
            "active only": (q.TicketFilter(active=True), None),
            "tenant + status=open": (q.TicketFilter(tenant="jooptics", status="open"), None),
            "type=erasure": (q.TicketFilter(kind="erasure"), None),
            "overdue": (q.TicketFilter(overdue=True), None),
            "assignee": (q.TicketFilter(assignee=113), None),
            f"deep page (after row {deep_offset:,})": (q.TicketFilter(), cursor),
        }
        for name, (f, after) in cases.items():

            async def call(f: Any = f, after: Any = after) -> None:
                async with sessions() as session:
                    rows, _next = await q.page_tickets(session, f, now=now, limit=PAGE, after=after)
                    assert rows

            out[name] = await time_calls(call, repeat)
        if hasattr(q, "count_by_status"):

            async def counts(f: Any) -> None:
                async with sessions() as session:
                    await q.count_by_status(session, f, now=now)

            out["count_by_status (all)"] = await time_calls(
                lambda: counts(q.TicketFilter()), max(5, repeat // 3)
            )
            out["count_by_status (one tenant)"] = await time_calls(
                lambda: counts(q.TicketFilter(tenant="jooptics")), max(5, repeat // 3)
            )
    finally:
        await engine.dispose()
    return out, encoded


async def _deep_cursor(sessions: Any, q: Any, now: datetime, offset: int) -> Any:
    """The cursor of row `offset` in list order (found once with OFFSET, not timed)."""
    import sqlalchemy as sa

    async with sessions() as session:
        result = await session.exec(
            sa.text(
                "SELECT due_at, id FROM ticket WHERE due_at IS NOT NULL "
                "ORDER BY due_at, id LIMIT 1 OFFSET :o"
            ).bindparams(o=offset)
        )
        due_at, ticket_id = result.one()
    if isinstance(due_at, str):
        due_at = datetime.fromisoformat(due_at)
    if due_at.tzinfo is None:
        due_at = due_at.replace(tzinfo=UTC)
    return q.Cursor(due_at, int(ticket_id))


KEYSET_SQL = {
    "first page": ("", "ORDER BY due_at, id"),
    "tenant + status=open": ("tenant = 'jooptics' AND status = 'open'", "ORDER BY due_at, id"),
    "type=erasure": ("kind = 'erasure'", "ORDER BY due_at, id"),
    "overdue": (
        "status IN ('awaiting_verification', 'open', 'in_progress', 'awaiting_requester') "
        "AND due_at < :now",
        "ORDER BY due_at, id",
    ),
}


async def list_queries_sql(
    database_url: str, now: datetime, repeat: int, deep_offset: int
) -> dict[str, Any]:
    """The same list as plain keyset SQL, for when storage.admin_queries does not exist."""
    import sqlalchemy as sa

    from storage.db import create_engine

    engine = create_engine(database_url)
    out: dict[str, Any] = {"source": "plain keyset SQL (admin/API code not present)"}
    sqlite_now = _sqlite_ts(now)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "SELECT due_at, id FROM ticket WHERE due_at IS NOT NULL "
                        "ORDER BY due_at, id LIMIT 1 OFFSET :o"
                    ),
                    {"o": deep_offset},
                )
            ).one()
        cases = dict(KEYSET_SQL)
        cases[f"deep page (after row {deep_offset:,})"] = (
            "(due_at, id) > (:cd, :ci)",
            "ORDER BY due_at, id",
        )
        for name, (where, order) in cases.items():
            clause = "due_at IS NOT NULL" + (f" AND {where}" if where else "")
            sql = sa.text(f"SELECT * FROM ticket WHERE {clause} {order} LIMIT {PAGE + 1}")
            params = {"now": sqlite_now if "sqlite" in database_url else now,
                      "cd": row[0], "ci": row[1]}  # fmt: skip

            async def call(sql: Any = sql, params: Any = params) -> None:
                async with engine.connect() as conn:
                    rows = (await conn.execute(sql, params)).all()
                    assert rows

            out[name] = await time_calls(call, repeat)
    finally:
        await engine.dispose()
    return out


# --- the scheduler pass ----------------------------------------------------------------------


async def scheduler_pass(
    database_url: str, kind: str, raw: str, within: float, workdir: Path, profile: bool
) -> dict[str, Any]:
    """`ReminderPass.run()` over the active tickets, cold (none planned yet) then warm, in a
    child process (`bench.scheduler_pass`) ended after `within` seconds if still running;
    the rate of the batches it committed then gives the estimate for all."""
    unplanned = await _unplanned(kind, raw)
    out: dict[str, Any] = {"unplanned_before": unplanned}
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.scheduler_pass", database_url,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    sampler = (
        start_profile(proc.pid, within, workdir / f"profile-pass-{kind}.txt") if profile else None
    )
    lines: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(within):
            assert proc.stdout is not None
            async for line in proc.stdout:
                lines.append(json.loads(line))
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
    elapsed = time.perf_counter() - started
    left = await _unplanned(kind, raw)
    done = unplanned - left
    cold = next((x for x in lines if x["pass"] == "cold"), None)
    warm = next((x for x in lines if x["pass"] == "warm"), None)
    seconds = cold["seconds"] if cold else elapsed
    if cold:  # the database no longer tells: the "new policy" pass plans them again
        done = max(cold.get("planned_in_sets", 0), cold["looked_at"])
    out |= {
        "cold_finished": cold is not None,
        "cold_seconds": round(seconds, 3),
        "cold_looked_at": done,
        "cold_tickets_per_s": round(done / seconds, 1) if seconds else None,
        "cold_estimate_for_all_s": round(unplanned / (done / seconds), 1) if done else None,
    }
    if cold:
        out |= {"cold_sent": cold["sent"], "cold_failed": cold["failed"]}
        out |= {f"cold_{k}": cold.get(k) for k in ("passes", "longest_pass_s", "pass_seconds")}
        out |= {f"cold_{k}": cold.get(k) for k in ("planned_in_sets", "in_sets_seconds")}
        out["cold_looked_at_one_by_one"] = cold["looked_at"]
        out["cold_by_kind"] = cold["by_kind"]
    if warm:
        out |= {"warm_seconds": warm["seconds"], "warm_looked_at": warm["looked_at"]}
    regular = next((x for x in lines if x["pass"] == "regular"), None)
    if regular:
        out["regular"] = {k: v for k, v in regular.items() if k != "pass"}
    for name in ("new policy", "day later"):
        found = next((x for x in lines if x["pass"] == name), None)
        if found:
            key = name.replace(" ", "_")
            figures = (
                "seconds",
                "passes",
                "longest_pass_s",
                "looked_at",
                "sent",
                "planned_in_sets",
                "in_sets_seconds",
            )
            out |= {f"{key}_{figure}": found.get(figure) for figure in figures}
    if sampler is not None:
        sampler.wait(timeout=30)
        out["profile"] = summarize_profile(workdir / f"profile-pass-{kind}.txt", top=40)
    return out


async def reset_plans(kind: str, raw: str) -> None:
    """Forget the plans and what was sent, so that `serve` does its own cold pass."""
    statements = [
        "DELETE FROM outbound_message",
        "DELETE FROM reminder_sent",
        "UPDATE ticket_clock SET next_at = NULL WHERE ticket_id IN (SELECT id FROM ticket "
        "WHERE status IN ('awaiting_verification', 'open', 'in_progress', 'awaiting_requester'))",
    ]
    if kind == "sqlite":
        conn = sqlite3.connect(raw, isolation_level=None)
        try:
            for sql in statements:
                conn.execute(sql)
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(raw)
    try:
        for sql in statements:
            await pg.execute(sql)
    finally:
        await pg.close()


# --- serve and the HTTP endpoints --------------------------------------------------------------


async def serve_holding(
    kind: str,
    database_url: str,
    raw: str,
    workdir: Path,
    repeat: int,
    seconds: float,
    deep: tuple[str | None, int],
) -> dict[str, Any]:
    """`serve` on the big database: its first pass, the list over HTTP if it exists, RSS."""
    import aiohttp

    from bench.http_admin import AdminClient
    from tests.fakes.telegram_api import FakeTelegram
    from tests.fakes.twilio_api import FakeTwilio
    from tests.processes import ServeProcess, service_env

    out: dict[str, Any] = {}
    async with FakeTelegram() as telegram, FakeTwilio() as twilio:
        env = service_env(database_url, telegram, twilio)
        serve = await ServeProcess(env, workdir, f"serve-scale-{kind}").start(timeout=120)
        assert serve.proc is not None
        pid = serve.proc.pid
        try:
            out["rss_mb_at_start"] = rss_mb(pid)
            started = time.perf_counter()
            passed = await _wait_first_pass(kind, raw, seconds)
            # None: serve's own cold pass was still running when the list was timed
            out["own_cold_pass_done_after_s"] = (
                round(time.perf_counter() - started, 1) if passed else None
            )
            jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                client = AdminClient(http, serve.url, env, deep)
                with collector_paused():  # the driver's own pauses are not serve's latency
                    out["http"] = await client.time_list_pages(repeat)
            out["rss_mb"] = rss_mb(pid)
            out["peak_rss_mb"] = hwm_mb(pid)
        finally:
            serve.stop()
        out["telegram_rate_violations"] = len(telegram.rate_violations)
    return out


async def _unplanned(kind: str, raw: str) -> int:
    sql = "SELECT count(*) FROM ticket_clock WHERE next_at IS NULL"
    if kind == "sqlite":
        conn = sqlite3.connect(raw)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()
    pg = await asyncpg.connect(raw)
    try:
        return int(await pg.fetchval(sql))
    finally:
        await pg.close()


async def _pending(kind: str, raw: str, before: datetime) -> int:
    """Tickets the clock has yet to plan, or to look at for something due before `before`."""
    sql = "SELECT count(*) FROM ticket_clock WHERE next_at IS NULL OR next_at <= {}"
    if kind == "sqlite":
        conn = sqlite3.connect(raw)
        try:
            return int(conn.execute(sql.format("?"), (_sqlite_ts(before),)).fetchone()[0])
        finally:
            conn.close()
    pg = await asyncpg.connect(raw)
    try:
        return int(await pg.fetchval(sql.format("$1"), before))
    finally:
        await pg.close()


async def _wait_first_pass(kind: str, raw: str, seconds: float) -> bool:
    """Until serve's clock has finished its first pass: every ticket planned (in sets,
    most of them), and every one that had something due when it started looked at."""
    began = datetime.now(UTC)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await _pending(kind, raw, began) == 0:
            return True
        await asyncio.sleep(0.25)
    return False


# --- main ----------------------------------------------------------------------------------------


async def bench_engine(
    kind: str, args: argparse.Namespace, workdir: Path, out: dict[str, Any]
) -> None:
    """Fills `out` as it goes, so a failure keeps what was measured before it."""
    now = datetime.now(UTC)
    pg_name = None
    if kind == "sqlite":
        path = workdir / "scale.db"
        url, raw = f"sqlite+aiosqlite:///{path}", str(path)
    else:
        pg_name = await create_pg_database("rd_bench_scale")
        url, raw = pg_url(pg_name), pg_dsn(pg_name)
    try:
        rightsdesk_migrate(url)
        started = time.perf_counter()
        data = generate(args.tickets, args.active, now, summaries=not args.older_rows)
        generated = time.perf_counter() - started
        started = time.perf_counter()
        if kind == "sqlite":
            await asyncio.to_thread(load_sqlite, path, data)
        else:
            await load_postgres(raw, data)
        out["generate_seconds"] = round(generated, 1)
        out["load_seconds"] = round(time.perf_counter() - started, 1)
        out["events"] = len(data.events)
        del data
        out["fold_counts_seconds"] = await fold_counts(url)
        print(f"  {kind}: loaded in {out['load_seconds']} s", file=sys.stderr, flush=True)
        deep = args.tickets // 2
        problem = _admin_queries_problem()
        encoded = None
        if problem is None:
            out["list"], encoded = await list_queries_in_process(url, now, args.repeat, deep)
        else:
            out["list"] = await list_queries_sql(url, now, args.repeat, deep)
            out["list"]["why_plain_sql"] = problem
        out["scheduler_pass"] = await scheduler_pass(
            url, kind, raw, args.pass_timeout, workdir, args.profile
        )
        await reset_plans(kind, raw)
        out["serve"] = await serve_holding(
            kind, url, raw, workdir, args.repeat, args.serve_wait, (encoded, deep)
        )
    finally:
        if pg_name:
            await drop_pg_database(pg_name)


def _longest(db: str, sp: dict[str, Any], key: str) -> tuple[Any, ...]:
    passes = sp.get(f"{key}_passes")
    return (db, f"  the longest of its {passes} passes (s)", sp.get(f"{key}_longest_pass_s"),
            "", f"< {TARGET_PASS_S:.0f}")  # fmt: skip


def render(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[Any, ...]] = []
    for r in results:
        db = r["database"]
        if "load_seconds" in r:
            rows.append((db, f"load {r['tickets']:,} tickets + {r['events']:,} events (s)",
                         r["load_seconds"], "", ""))  # fmt: skip
        listing = r.get("list", {})
        source = "admin_queries" if "admin_queries" in listing.get("source", "") else "SQL"
        for name, figure in listing.items():
            if isinstance(figure, dict):
                target = f"< {TARGET_P95_MS:.0f}" if not name.startswith("count") else ""
                rows.append((db, f"{name} [{source}]", figure["p50_ms"], figure["p95_ms"],
                             target))  # fmt: skip
        serve = r.get("serve", {})
        for name, figure in (serve.get("http") or {}).items():
            if isinstance(figure, dict) and "p95_ms" in figure:
                rows.append((db, f"HTTP {name}", figure["p50_ms"], figure["p95_ms"],
                             f"< {TARGET_P95_MS:.0f}"))  # fmt: skip
            elif isinstance(figure, str):
                rows.append((db, f"HTTP {name}: {figure}", "", "", ""))
        sp = r.get("scheduler_pass")
        if sp:
            rows.append((db, f"scheduler, cold, {sp['unplanned_before']:,} tickets: all passes (s)",
                         sp["cold_seconds"] if sp["cold_finished"] else
                         f"> {sp['cold_seconds']} (est. {sp['cold_estimate_for_all_s']})",
                         f"{sp['cold_tickets_per_s']}/s", ""))  # fmt: skip
            if sp.get("cold_passes"):
                rows.append((db, f"  the longest of its {sp['cold_passes']} passes (s)",
                             sp["cold_longest_pass_s"], "", f"< {TARGET_PASS_S:.0f}"))  # fmt: skip
            if sp.get("cold_in_sets_seconds") is not None:
                rows.append((db, f"  of which planning {sp['cold_planned_in_sets']:,} in sets, "
                             f"then {sp['cold_looked_at_one_by_one']:,} one by one (s)",
                             sp["cold_in_sets_seconds"], "", ""))  # fmt: skip
            if "warm_seconds" in sp:
                rows.append((db, "scheduler pass, warm, nothing due (s)", sp["warm_seconds"],
                             "", ""))  # fmt: skip
            if "regular" in sp:
                regular = sp["regular"]
                rows.append((db, f"scheduler pass as it runs, {regular['n']} in a row (ms)",
                             regular["p50_ms"], regular["p95_ms"],
                             f"< {TARGET_PASS_S * 1000:.0f}"))  # fmt: skip
            if "new_policy_seconds" in sp:
                rows.append((db, f"scheduler, new reminder policy: "
                             f"{sp['new_policy_planned_in_sets'] or 0:,} planned again in sets, "
                             f"{sp['new_policy_looked_at']:,} one by one: all passes (s)",
                             sp["new_policy_seconds"], "", ""))  # fmt: skip
                rows.append(_longest(db, sp, "new_policy"))
            if "day_later_seconds" in sp:
                rows.append((db, f"scheduler, a day's work at once: {sp['day_later_sent']:,} "
                             f"sent; {sp['day_later_planned_in_sets'] or 0:,} planned in sets, "
                             f"{sp['day_later_looked_at']:,} one by one: all passes (s)",
                             sp["day_later_seconds"], "", ""))  # fmt: skip
                rows.append(_longest(db, sp, "day_later"))
        if serve:
            rows.append((db, "serve RSS after first pass + list (MB)", serve.get("rss_mb"),
                         serve.get("peak_rss_mb"), f"< {TARGET_RSS_MB:.0f}"))  # fmt: skip
        if "error" in r:
            rows.append((db, f"ERROR {r['error'][:80]}", "", "", ""))
    return table(rows, ["db", "figure", "p50 / value", "p95 / peak", "target"])


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rd-bench-scale-"))
    results = []
    try:
        for kind in args.databases:
            if kind == "postgres" and not await pg_available():
                print("PostgreSQL is not reachable: skipped", file=sys.stderr)
                continue
            print(f"… {kind}", file=sys.stderr, flush=True)
            out: dict[str, Any] = {"database": kind, "tickets": args.tickets}
            out["active"] = args.active
            results.append(out)
            try:
                await bench_engine(kind, args, workdir, out)
            except Exception as exc:  # report what ran; the error is part of the result
                logging.getLogger("bench").exception("%s failed", kind)
                out["error"] = f"{type(exc).__name__}: {exc}"
            settings = {k: getattr(args, k) for k in ("tickets", "active", "repeat")}
            write_json(  # after each database, so that an interrupted run keeps it
                "scale-quick" if args.quick else "scale",
                {"settings": settings, "results": results, "partial": True},
                args.json,
            )
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    settings = {k: getattr(args, k) for k in ("tickets", "active", "repeat")}
    emit(
        "scale-quick" if args.quick else "scale",
        {"settings": settings, "results": results},
        render(results),
        args.json,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 tickets (< 1 minute)")
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--active", type=int, default=None, help="default: 10 %% of tickets")
    parser.add_argument(
        "--repeat", type=int, default=100, help="requests per series (a p95 of 25 is its 2nd worst)"
    )
    parser.add_argument(
        "--serve-wait", type=float, default=60.0, help="how long serve's own cold pass may take"
    )
    parser.add_argument("--pass-timeout", type=float, default=20.0)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--profile", action="store_true", help="py-spy on the scheduler pass")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--older-rows",
        action="store_true",
        help="tickets without history summaries, as after upgrading to migration 0014",
    )
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.quick:  # SQLite only unless --databases says otherwise: under a minute
        args.tickets, args.repeat, args.serve_wait, args.pass_timeout = 50_000, 10, 5.0, 5.0
        if "--databases" not in (argv if argv is not None else sys.argv):
            args.databases = "sqlite"
    if args.active is None:
        args.active = args.tickets // 10
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    return args


def main() -> None:
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
