"""Webhook throughput and latency of the real `rightsdesk serve`, beside its ceiling.

For each database (a SQLite file, then a fresh PostgreSQL database migrated with
`rightsdesk migrate`) this starts `python -m bot.cli serve` as a child process against the
loopback fakes (Twilio, Telegram) and a loopback SMTP server, then:

1. open loop: offers a fixed load (200 messages/s for 20 s) of whole intake conversations
   (complaints, STOP opt-outs, erasures verified by a mailed code), each customer typing
   their next message once the bot answered: webhook latency p50/p99, answer latency;
2. closed loop: N customers at a time for 20 s, each starting a new conversation when one
   ends: messages answered per second, requests filed per second;
3. webhook acceptance alone: independent first messages posted as fast as K connections
   allow (the work they cause runs in the same process meanwhile);
4. the ceiling: `bench.bare_server` (parse, check the signature, INSERT + commit, on the
   same kind of database) under the same K connections and the same 200 messages/s.

    .venv/bin/python -m bench.webhooks [--quick] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import (
    ROOT,
    collector_paused,
    cpu_seconds,
    create_pg_database,
    drop_pg_database,
    emit,
    hwm_mb,
    pg_available,
    pg_dsn,
    pg_url,
    rightsdesk_migrate,
    rss_mb,
    self_cpu_seconds,
    start_profile,
    summarize_profile,
    summary_ms,
    table,
)
from bench.loadgen import (
    JOO,
    Customers,
    LoopWatch,
    MailBox,
    RecordingTelegram,
    RecordingTwilio,
    Stats,
    blast,
    closed_loop,
    open_loop,
    slow_seconds,
)
from storage.inbound import Journal
from tests.fakes.twilio_api import inbound_whatsapp_form, sign_twilio_request
from tests.processes import ServeProcess, free_port, service_env
from tests.service import PUBLIC


class VariantServe(ServeProcess):
    """`serve` through bench.serve_variant: one proposed change applied (BENCH_VARIANT)."""

    async def start(self, *, timeout: float = 30.0) -> ServeProcess:  # noqa: ASYNC109
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (a child we start, not wait for)
            [sys.executable, "-m", "bench.serve_variant"],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited early:\n{self.log()}")
                try:
                    async with http.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"serve not ready:\n{self.log()}")


RATE = 200.0  # messages per second offered in the open loop
TARGET_P99_MS = 50.0
TARGET_RATIO = 0.5


async def _child(
    argv: list[str], workdir: Path, name: str, port: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m <argv>` and wait until it answers /healthz on `port`."""
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 (starting a child, not waiting on it)
            [sys.executable, "-m", *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(log_path.read_text())
            try:
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"{name} not ready:\n{log_path.read_text()}")


async def _bare_server(
    database: str, token: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = ["bench.bare_server", "--database", database, "--port", str(port)]
    argv += ["--auth-token", token, "--public", PUBLIC]
    return await _child(argv, workdir, "bare", port)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _poster(
    http: aiohttp.ClientSession, url: str, token: str, prefix: int, text: str = "hi"
) -> Any:
    """post(i): a signed first message from a new customer i; the HTTP status."""
    signed = PUBLIC + "/webhooks/whatsapp"

    async def post(i: int) -> int:
        form = inbound_whatsapp_form(from_=f"whatsapp:+9{prefix}{i:08d}", to=JOO, body=text)
        signature = sign_twilio_request(token, signed, form)
        try:
            async with http.post(
                url + "/webhooks/whatsapp", data=form, headers={"X-Twilio-Signature": signature}
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    return post


async def _ticket_counts(kind: str, database: str) -> dict[str, int]:
    sql = "SELECT kind || ':' || status, count(*) FROM ticket GROUP BY 1"
    if kind == "sqlite":
        with sqlite3.connect(database) as conn:
            return {k: int(n) for k, n in conn.execute(sql)}
    conn = await asyncpg.connect(database)
    try:
        return {r[0]: int(r[1]) for r in await conn.fetch(sql)}
    finally:
        await conn.close()


async def _inbox_waiting(kind: str, database: str) -> int:
    """Customer work still under way: inbound messages not processed, and replies (WhatsApp,
    email) not yet sent. Staff-group cards are left out: Telegram takes 20 a minute."""
    sql = (
        "SELECT (SELECT count(*) FROM inbound_message WHERE processed_at IS NULL) + "
        "(SELECT count(*) FROM outbound_message WHERE status IN ('pending', 'sending') "
        "AND channel IN ('whatsapp', 'email'))"
    )
    if kind == "sqlite":
        with sqlite3.connect(database) as conn:
            waiting = int(conn.execute(sql).fetchone()[0])
        journal = Journal.path_beside(f"sqlite:///{database}")  # stored, not yet moved in
        if journal is not None and journal.exists():
            with sqlite3.connect(journal) as conn:
                waiting += int(conn.execute(f"SELECT count(*) FROM {Journal.TABLE}").fetchone()[0])
        return waiting
    conn = await asyncpg.connect(database)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def _filed(counts: dict[str, int]) -> int:
    """Requests on file: every ticket not left awaiting verification."""
    return sum(n for k, n in counts.items() if not k.endswith(":awaiting_verification"))


async def bench_engine(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """All phases against one database kind."""
    pg_names: list[str] = []
    if kind == "sqlite":
        path = workdir / "rightsdesk.db"
        url, raw = f"sqlite+aiosqlite:///{path}", str(path)
        bare_db = f"sqlite:///{workdir / 'bare.db'}"
    else:
        name = await create_pg_database("rd_bench_hooks")
        bare_name = await create_pg_database("rd_bench_bare")
        pg_names += [name, bare_name]
        url, raw, bare_db = pg_url(name), pg_dsn(name), pg_dsn(bare_name)
    out: dict[str, Any] = {"database": kind}
    try:
        rightsdesk_migrate(url)
        loop = asyncio.get_running_loop()
        async with RecordingTelegram() as telegram, RecordingTwilio() as twilio:
            with MailBox(loop) as mail:
                env = service_env(url, telegram, twilio, SMTP_URL=mail.url)
                if args.variant:
                    env["BENCH_VARIANT"] = args.variant
                    serve = await VariantServe(env, workdir, f"serve-{kind}").start(timeout=60)
                else:
                    serve = await ServeProcess(env, workdir, f"serve-{kind}").start(timeout=60)
                assert serve.proc is not None
                pid = serve.proc.pid
                connector = aiohttp.TCPConnector(limit=0)
                try:
                    async with aiohttp.ClientSession(connector=connector) as http:
                        out |= await _phases(kind, args, http, serve.url, twilio, mail, pid, raw)
                finally:
                    out["serve_rss_mb"] = rss_mb(pid)
                    out["serve_peak_rss_mb"] = hwm_mb(pid)
                    serve.stop()
                out["handlers_only"] = await _handlers_only(args, env, workdir, twilio.auth_token)
                out["telegram_rate_violations"] = len(telegram.rate_violations)
                out["contract_violations"] = len(twilio.violations) + len(telegram.violations)
        counts = await _ticket_counts(kind, raw)
        out["tickets"] = counts
        out["tickets_filed_total"] = _filed(counts)
        out["ceiling"] = await _ceiling(kind, args, bare_db, twilio.auth_token, workdir)
    finally:
        for name in pg_names:
            await drop_pg_database(name)
    service = out["webhook_only"]["accepted_per_s"]
    sustained = out["closed_loop"]["messages_per_s"]
    ceiling = out["ceiling"]["accepted_per_s"]
    out["ratio_webhook_to_ceiling"] = round(service / ceiling, 3) if ceiling else None
    handlers = out["handlers_only"]["accepted_per_s"]
    out["ratio_handlers_only_to_ceiling"] = round(handlers / ceiling, 3) if ceiling else None
    out["ratio_sustained_to_ceiling"] = round(sustained / ceiling, 3) if ceiling else None
    return out


async def _phases(
    kind: str,
    args: argparse.Namespace,
    http: aiohttp.ClientSession,
    base: str,
    twilio: RecordingTwilio,
    mail: MailBox,
    pid: int,
    raw: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    customers = Customers(http, base, twilio, mail, seed=11, reply_timeout=args.reply_timeout)
    # warm-up: connections, caches, the first of each conversation kind
    await closed_loop(customers, 6, 1.0 if args.quick else 2.0, Stats())

    # 1. open loop at a fixed offered load
    stats = Stats()
    profile = _profile(args, pid, args.duration, f"{kind}-open")
    cpu0, driver0 = cpu_seconds(pid), self_cpu_seconds()
    with collector_paused(), LoopWatch() as watch:
        elapsed = await open_loop(customers, args.rate, args.duration, stats)
    cpu1, driver1 = cpu_seconds(pid), self_cpu_seconds()
    out["open_loop"] = {
        "offered_per_s": args.rate,
        "seconds": round(elapsed, 2),
        "messages_sent": stats.sent,
        "statuses": dict(stats.statuses),
        "webhook_latency": summary_ms(stats.webhook),
        "answer_latency": summary_ms(stats.reply),
        "code_mail_latency": summary_ms(stats.code_mail),
        "send_lag": summary_ms(stats.lag),
        "driver_stalls": watch.summary(),
        "slow_seconds": slow_seconds(stats.webhook_at, stats.webhook),
        "no_answer": stats.no_reply,
        "errors": dict(stats.errors),
        "conversations_finished": dict(stats.conversations),
        "serve_cpu_share": round((cpu1 - cpu0) / elapsed, 2) if cpu0 and cpu1 else None,
        "driver_cpu_share": round((driver1 - driver0) / elapsed, 2),
        "profile": _profile_done(profile),
    }
    started = time.perf_counter()
    drained = await _drain(kind, raw, within=args.drain_timeout)
    out["open_loop"]["seconds_offered"] = args.duration
    out["open_loop"]["backlog_drained_after_s"] = (
        round(time.perf_counter() - started, 1) if drained else None
    )

    # 2. closed loop: as many whole conversations as N customers at a time get through
    stats = Stats()
    profile = _profile(args, pid, args.duration, f"{kind}-closed")
    cpu0 = cpu_seconds(pid)
    with collector_paused():
        elapsed = await closed_loop(customers, args.concurrency, args.duration, stats)
    cpu1 = cpu_seconds(pid)
    answered = len(stats.reply)
    filing = sum(n for s, n in stats.conversations.items())
    out["closed_loop"] = {
        "customers_at_once": args.concurrency,
        "seconds": round(elapsed, 2),
        "messages_answered": answered,
        "messages_per_s": round(answered / elapsed, 1),
        "conversations_finished": dict(stats.conversations),
        "requests_filed_per_s": round(filing / elapsed, 1),
        "webhook_latency": summary_ms(stats.webhook),
        "answer_latency": summary_ms(stats.reply),
        "no_answer": stats.no_reply,
        "errors": dict(stats.errors),
        "serve_cpu_share": round((cpu1 - cpu0) / elapsed, 2) if cpu0 and cpu1 else None,
        "profile": _profile_done(profile),
    }

    await _drain(kind, raw, within=args.drain_timeout)

    # 3. webhook acceptance alone (what each accepted message causes runs meanwhile)
    latencies: list[float] = []
    post = _poster(http, base, twilio.auth_token, 1)
    with collector_paused():
        ok, elapsed = await blast(post, args.blast_concurrency, args.blast_duration, latencies)
    started = time.perf_counter()
    drained = await _drain(kind, raw, within=args.drain_timeout)
    out["webhook_only"] = {
        "connections": args.blast_concurrency,
        "seconds": round(elapsed, 2),
        "accepted": ok,
        "accepted_per_s": round(ok / elapsed, 1),
        "latency": summary_ms(latencies),
        "backlog_drained_after_s": round(time.perf_counter() - started, 1) if drained else None,
    }
    return out


def _profile(
    args: argparse.Namespace, pid: int, seconds: float, name: str
) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy on `serve` for the phase about to run, when asked for (--profile)."""
    if not args.profile:
        return None
    out = args.workdir / f"profile-{name}.txt"
    proc = start_profile(pid, seconds, out)
    return (proc, out) if proc is not None else None


def _profile_done(profile: tuple[subprocess.Popen[bytes], Path] | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    proc, out = profile
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return summarize_profile(out, top=30)


async def _handlers_only(
    args: argparse.Namespace, env: dict[str, str], workdir: Path, token: str
) -> dict[str, Any]:
    """The real handlers with no background workers (bench.serve_handlers), same blast."""
    port = free_port()
    proc, url = await _child(
        ["bench.serve_handlers"], workdir, "handlers-only", port, dict(env, PORT=str(port))
    )
    profile = _profile(args, proc.pid, args.blast_duration, "handlers-only")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            post = _poster(http, url, token, 3)
            await blast(post, 4, 1.0, [])
            latencies: list[float] = []
            with collector_paused():
                ok, elapsed = await blast(
                    post, args.blast_concurrency, args.blast_duration, latencies
                )
                fixed = await _fixed_rate(post, args.rate, min(args.duration, 6.0))
        return {
            "connections": args.blast_concurrency,
            "accepted_per_s": round(ok / elapsed, 1),
            "latency": summary_ms(latencies),
            "at_fixed_rate": fixed,
            "profile": _profile_done(profile),
        }
    finally:
        _stop(proc)


async def _drain(kind: str, raw: str, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await _inbox_waiting(kind, raw) == 0:
            return True
        await asyncio.sleep(0.5)
    return False


async def _ceiling(
    kind: str, args: argparse.Namespace, database: str, token: str, workdir: Path
) -> dict[str, Any]:
    proc, url = await _bare_server(database, token, workdir)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            post = _poster(http, url, token, 2)
            await blast(post, 4, 1.0, [])  # warm-up
            latencies: list[float] = []
            with collector_paused():
                ok, elapsed = await blast(
                    post, args.blast_concurrency, args.blast_duration, latencies
                )
                fixed = await _fixed_rate(post, args.rate, min(args.duration, 6.0))
        return {
            "database": kind,
            "connections": args.blast_concurrency,
            "seconds": round(elapsed, 2),
            "accepted": ok,
            "accepted_per_s": round(ok / elapsed, 1),
            "latency": summary_ms(latencies),
            "at_fixed_rate": fixed,
            "rss_mb": rss_mb(proc.pid),
        }
    finally:
        _stop(proc)


async def _fixed_rate(post: Any, rate: float, duration: float) -> dict[str, Any]:
    """Independent posts at `rate` a second (open loop): their latency."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    tasks = []
    started = loop.time()

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        await post(100_000_000 + i)
        latencies.append(time.perf_counter() - t0)

    for i in range(int(rate * duration)):
        delay = started + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.wait(tasks, timeout=30)
    return {"offered_per_s": rate, "latency": summary_ms(latencies)}


def render(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[Any, ...]] = []
    for r in results:
        db = r["database"]
        ol, cl, wo, ce, ho = (
            r["open_loop"], r["closed_loop"], r["webhook_only"], r["ceiling"], r["handlers_only"]
        )  # fmt: skip
        rate = f"{ol['offered_per_s']:.0f}/s"
        answer = ol["answer_latency"]
        rows += [
            (db, f"webhook p50 @ {rate}, whole service (ms)", ol["webhook_latency"]["p50_ms"],
             ce["at_fixed_rate"]["latency"]["p50_ms"], ""),
            (db, f"webhook p99 @ {rate}, whole service (ms)", ol["webhook_latency"]["p99_ms"],
             ce["at_fixed_rate"]["latency"]["p99_ms"], f"< {TARGET_P99_MS:.0f}"),
            (db, f"webhook p99 @ {rate}, handlers alone (ms)",
             ho["at_fixed_rate"]["latency"]["p99_ms"], ce["at_fixed_rate"]["latency"]["p99_ms"],
             f"< {TARGET_P99_MS:.0f}"),
            (db, f"answer p50 / p99 @ {rate} (ms)", f"{answer['p50_ms']} / {answer['p99_ms']}",
             "", ""),
            (db, f"backlog after {ol['seconds_offered']:.0f} s @ {rate} gone after (s)",
             ol["backlog_drained_after_s"], "", ""),
            (db, "accepted/s, whole service (max)", wo["accepted_per_s"], ce["accepted_per_s"],
             ""),
            (db, "  ratio to ceiling", r["ratio_webhook_to_ceiling"], 1.0, f">= {TARGET_RATIO}"),
            (db, "accepted/s, handlers alone (max)", ho["accepted_per_s"], ce["accepted_per_s"],
             ""),
            (db, "  ratio to ceiling", r["ratio_handlers_only_to_ceiling"], 1.0,
             f">= {TARGET_RATIO}"),
            (db, f"messages answered/s, {cl['customers_at_once']} customers", cl["messages_per_s"],
             "", ""),
            (db, "  ratio to ceiling", r["ratio_sustained_to_ceiling"], 1.0, ""),
            (db, "requests filed/s", cl["requests_filed_per_s"], "", ""),
            (db, "serve RSS after run (MB)", r["serve_rss_mb"], ce["rss_mb"], "< 200"),
        ]  # fmt: skip
    return table(rows, ["db", "figure", "rightsdesk", "ceiling", "target"])


async def main_async(args: argparse.Namespace) -> None:
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="rd-bench-hooks-"))
    args.workdir = workdir
    try:
        for kind in args.databases:
            if kind == "postgres" and not await pg_available():
                print("PostgreSQL at 127.0.0.1:5432 is not reachable: skipped", file=sys.stderr)
                continue
            print(f"… {kind}", file=sys.stderr, flush=True)
            results.append(await bench_engine(kind, args, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    settings = {
        k: getattr(args, k)
        for k in ("rate", "duration", "concurrency", "blast_concurrency", "blast_duration")
    }
    settings["variant"] = args.variant or None
    name = "webhooks" + (f"-{args.variant.replace(',', '+')}" if args.variant else "")
    name += "-quick" if args.quick else ""
    emit(name, {"settings": settings, "results": results}, render(results), args.json)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (< 1 minute)")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--blast-concurrency", type=int, default=32)
    parser.add_argument("--blast-duration", type=float, default=8.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--reply-timeout", type=float, default=30.0)
    parser.add_argument("--profile", action="store_true", help="sample serve with py-spy")
    parser.add_argument(
        "--variant", default="", help="serve through bench.serve_variant with these changes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument("--json", help="where to write the JSON (default bench/results/)")
    args = parser.parse_args(argv)
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if args.quick:  # SQLite only unless --databases says otherwise: under a minute
        if "--databases" not in (argv if argv is not None else sys.argv):
            args.databases = ["sqlite"]
        args.duration, args.blast_duration, args.drain_timeout = 3.0, 2.0, 2.0
        args.reply_timeout = 5.0
    return args


def main() -> None:
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
