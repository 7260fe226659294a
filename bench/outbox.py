"""The outbox under load: delivery rate to the fakes, and Telegram's limits held.

For each database a fresh, migrated database gets a queue of messages written with the
real `storage.outbox.enqueue` in one transaction:

- WhatsApp: one message to each of W customers (the fake Twilio has no rate limit);
- Telegram private chats: 3 messages to each of P chats (Telegram: about 1 a second per
  chat, 30 a second overall);
- Telegram staff groups: G messages to each of the three tenants' groups (20 a minute each).

Then `serve` (RUN_SCHEDULER=false) starts against the loopback fakes and its outbox worker
delivers them. Reported: WhatsApp and Telegram messages per second, how many of each were
delivered within the time allowed, the fastest observed rate per private chat, per group
and overall, and the fake Telegram's `rate_violations` (it records every send that breaks
one of the published limits) — the proof is that list staying empty.

The database also holds `--tickets` tickets (`bench.scale`'s spreads). Once half of the
WhatsApp queue is delivered, a client in a process of its own asks for the API's first
page (`/api/v1/tickets?limit=50`) back to back until the rest is delivered, and again for
5 s once everything is: the admin's wait while the outbox works and when it is idle
(`bot.priority`), and the WhatsApp rate alone and beside those requests.

    .venv/bin/python -m bench.outbox [--quick] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
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
)
from bench.http_admin import ApiSeries, api_auth
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio
from tests.processes import ServeProcess, service_env

GROUPS = [-1000000000001, -1000000000002, -1000000000003]  # config/tenants staff chats
SENDER = "whatsapp:+14155238881"
IDLE_SERIES_S = 5.0


class TimedTwilio(FakeTwilio):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def _create_message(self, form: dict[str, Any]) -> dict[str, Any]:
        message = super()._create_message(form)
        self.times.append(time.monotonic())
        return message


class TimedTelegram(FakeTelegram):
    def __init__(self) -> None:
        super().__init__()
        self.times: defaultdict[Any, list[float]] = defaultdict(list)

    def _note_sent(self, chat_id: Any) -> None:
        super()._note_sent(chat_id)
        self.times[chat_id].append(time.monotonic())


async def _until(done: Callable[[], bool], deadline: float, step: float) -> None:
    while time.monotonic() < deadline:
        if done():
            break
        await asyncio.sleep(step)


def max_in_window(times: list[float], window: float) -> int:
    """The most events that fell within any `window` seconds."""
    best, recent = 0, deque[float]()
    for t in sorted(times):
        recent.append(t)
        while t - recent[0] > window:
            recent.popleft()
        best = max(best, len(recent))
    return best


def rate(times: list[float]) -> float | None:
    if len(times) < 2:
        return None
    return round((len(times) - 1) / (max(times) - min(times)), 1)


async def fill(database_url: str, whatsapp: int, private: int, per_chat: int, group: int) -> int:
    from storage import outbox
    from storage.db import create_engine, session_factory, transaction

    engine = create_engine(database_url)
    count = 0
    try:
        async with transaction(session_factory(engine)) as session:
            for n in range(whatsapp):
                outbox.enqueue(
                    session,
                    channel="whatsapp",
                    recipient=f"whatsapp:+92302{n:07d}",
                    payload={"from": SENDER, "text": f"Your request OD-2026-{n:05d} is filed."},
                )
                count += 1
            for k in range(per_chat):
                for n in range(private):
                    outbox.enqueue(
                        session,
                        channel="telegram",
                        recipient=str(7_000_000 + n),
                        payload={"text": f"Update {k + 1} on your request."},
                    )
                    count += 1
            for k in range(group):
                for chat in GROUPS:
                    outbox.enqueue(
                        session,
                        channel="telegram",
                        recipient=str(chat),
                        payload={"text": f"New ticket card {k + 1}"},
                    )
                    count += 1
    finally:
        await engine.dispose()
    return count


async def add_tickets(kind: str, url: str, where: Path | str, args: argparse.Namespace) -> None:
    """`args.tickets` tickets as `bench.scale` makes them, for the API's page to list."""
    from bench.scale import fold_counts, generate, load_postgres, load_sqlite

    data = generate(args.tickets, args.tickets // 10, datetime.now(UTC))
    if kind == "sqlite":
        await asyncio.to_thread(load_sqlite, Path(where), data)
    else:
        await load_postgres(pg_dsn(str(where)), data)
    await fold_counts(url)


async def bench_engine(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pg_name = None
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'outbox.db'}"
    else:
        pg_name = await create_pg_database("rd_bench_outbox")
        url = pg_url(pg_name)
    out: dict[str, Any] = {"database": kind}
    try:
        rightsdesk_migrate(url)
        queued = await fill(url, args.whatsapp, args.private, args.per_chat, args.group)
        out["queued"] = queued
        await add_tickets(kind, url, workdir / "outbox.db" if pg_name is None else pg_name, args)
        expected_tg = args.private * args.per_chat + args.group * len(GROUPS)
        async with TimedTelegram() as telegram, TimedTwilio() as twilio:
            env = service_env(url, telegram, twilio, RUN_SCHEDULER="false")
            auth = api_auth(env)
            started = time.monotonic()
            serve = await ServeProcess(env, workdir, f"serve-outbox-{kind}").start(timeout=60)
            assert serve.proc is not None
            sample = workdir / f"profile-outbox-{kind}.txt"
            sampler = start_profile(serve.proc.pid, 20, sample) if args.profile else None
            page = f"{serve.url}/api/v1/tickets?limit=50"
            try:
                deadline = started + args.seconds
                # the first half of the WhatsApp queue alone, the second half while the
                # API's first page is asked for back to back
                half = args.whatsapp // 2
                await _until(lambda: len(twilio.times) >= half, deadline, 0.01)
                busy = await ApiSeries(page, auth).start()
                await _until(lambda: len(twilio.times) >= args.whatsapp, deadline, 0.05)
                out["api_while_whatsapp_delivers"] = summary_ms(await busy.stop())
                while time.monotonic() < deadline:
                    sent_tg = sum(len(v) for v in telegram.times.values())
                    if len(twilio.times) >= args.whatsapp and sent_tg >= expected_tg:
                        break
                    await asyncio.sleep(0.2)
                idle = await ApiSeries(page, auth).start()
                await asyncio.sleep(IDLE_SERIES_S)
                out["api_once_delivered"] = summary_ms(await idle.stop())
                out["serve_rss_mb"] = rss_mb(serve.proc.pid)
                out["serve_peak_rss_mb"] = hwm_mb(serve.proc.pid)
            finally:
                serve.stop()
            if sampler is not None:
                sampler.wait(timeout=30)
                out["profile"] = summarize_profile(sample, top=40)
            elapsed = time.monotonic() - started
            private = {c: t for c, t in telegram.times.items() if isinstance(c, int) and c > 0}
            groups = {c: t for c, t in telegram.times.items() if c in GROUPS}
            all_tg = [t for ts in telegram.times.values() for t in ts]
            out |= {
                "seconds": round(elapsed, 1),
                "whatsapp_delivered": len(twilio.times),
                "whatsapp_per_s": rate(twilio.times),
                "whatsapp_per_s_alone": rate(twilio.times[: args.whatsapp // 2]),
                "whatsapp_per_s_beside_api": rate(twilio.times[args.whatsapp // 2 :]),
                "whatsapp_all_done_after_s": (
                    round(max(twilio.times) - started, 1)
                    if len(twilio.times) >= args.whatsapp
                    else None
                ),
                "telegram_expected": expected_tg,
                "telegram_delivered": len(all_tg),
                "telegram_per_s": rate(all_tg),
                "telegram_private_delivered": sum(len(t) for t in private.values()),
                "telegram_group_delivered": {str(c): len(t) for c, t in groups.items()},
                "max_overall_in_1s": max_in_window(all_tg, 1.0),
                "max_private_chat_in_1s": max(
                    (max_in_window(t, 1.0) for t in private.values()), default=0
                ),
                "max_group_in_60s": max(
                    (max_in_window(t, 60.0) for t in groups.values()), default=0
                ),
                "rate_violations": len(telegram.rate_violations),
                "rate_violation_examples": [str(v) for v in telegram.rate_violations[:5]],
                "contract_violations": len(twilio.violations) + len(telegram.violations),
            }
    finally:
        if pg_name:
            await drop_pg_database(pg_name)
    return out


def _api_row(db: str, name: str, r: dict[str, Any]) -> tuple[Any, ...]:
    key = "api_while_whatsapp_delivers" if "while" in name else "api_once_delivered"
    found = r.get(key, {})
    return (
        db,
        name,
        found.get("p95_ms"),
        f"p50 {found.get('p50_ms')}, max {found.get('max_ms')}, n {found.get('n')}",
    )


def render(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        db = r["database"]
        groups = r["telegram_group_delivered"]
        rows += [
            (
                db,
                "WhatsApp delivered / s: first half alone",
                r["whatsapp_per_s_alone"],
                f"{r['whatsapp_delivered']:,} in all",
            ),
            (
                db,
                "WhatsApp delivered / s: second half, API asked meanwhile",
                r["whatsapp_per_s_beside_api"],
                "",
            ),
            (
                db,
                "Telegram delivered / s",
                r["telegram_per_s"],
                f"{r['telegram_delivered']:,} of {r['telegram_expected']:,}",
            ),
            (db, "max Telegram sends in any 1 s (limit 30)", r["max_overall_in_1s"], ""),
            (db, "max to one private chat in 1 s (limit 1)", r["max_private_chat_in_1s"], ""),
            (
                db,
                "max to one group in 60 s (limit 20)",
                r["max_group_in_60s"],
                ", ".join(str(v) for v in groups.values()),
            ),
            (db, "fake Telegram rate_violations", r["rate_violations"], "must be 0"),
            _api_row(db, "API first page while WhatsApp delivers (ms)", r),
            _api_row(db, "API first page once all delivered (ms)", r),
            (db, "serve RSS (MB)", r["serve_rss_mb"], f"peak {r['serve_peak_rss_mb']}"),
        ]
    return table(rows, ["db", "figure", "value", "detail"])


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rd-bench-outbox-"))
    results = []
    try:
        for kind in args.databases:
            if kind == "postgres" and not await pg_available():
                print("PostgreSQL is not reachable: skipped", file=sys.stderr)
                continue
            print(f"… {kind}", file=sys.stderr, flush=True)
            results.append(await bench_engine(kind, args, workdir))
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    settings = {
        k: getattr(args, k)
        for k in ("whatsapp", "private", "per_chat", "group", "seconds", "tickets")
    }
    emit(
        "outbox-quick" if args.quick else "outbox",
        {"settings": settings, "results": results},
        render(results),
        args.json,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small queues, 20 s per database")
    parser.add_argument("--whatsapp", type=int, default=3000)
    parser.add_argument("--private", type=int, default=300)
    parser.add_argument("--per-chat", type=int, default=3)
    parser.add_argument(
        "--tickets", type=int, default=2000, help="in the database, for the API's page"
    )
    parser.add_argument("--group", type=int, default=25, help="messages per staff group")
    parser.add_argument("--seconds", type=float, default=100.0, help="time allowed per database")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--profile", action="store_true", help="py-spy on serve (20 s)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.quick:  # SQLite only unless --databases says otherwise: under a minute
        args.whatsapp, args.private, args.group, args.seconds = 500, 60, 10, 20.0
        if "--databases" not in (argv if argv is not None else sys.argv):
            args.databases = "sqlite"
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    return args


def main() -> None:
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
