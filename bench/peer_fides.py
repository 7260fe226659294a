"""A peer: ethyca-fides's privacy-request creation beside rightsdesk filing requests.

fides (the open-source privacy-request platform) is installed in its own virtual
environment, never in the project's:

    python3 -m venv /tmp/fides-venv && /tmp/fides-venv/bin/pip install ethyca-fides

This script then, in one run on this machine:

1. starts `fides webserver` against its own fresh PostgreSQL database (127.0.0.1:5432) and
   Redis (127.0.0.1:6379), waits for /health, and times `POST /api/v1/privacy-request`
   (the privacy center's unauthenticated creation endpoint; one access request per call,
   the default access policy) with C concurrent clients for D seconds;
2. starts `rightsdesk serve` against its own fresh PostgreSQL database with the loopback
   fakes and times C concurrent WhatsApp customers filing complaints (three signed
   webhooks each: the request, its details, "yes"; filed when the reference comes back).

Reported for both: requests filed per second, the latency of the filing call, and the
service's resident memory. If fides cannot run here the reason (command, error) is kept.

    .venv/bin/python -m bench.peer_fides [--quick] [--fides-venv /tmp/fides-venv]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    create_pg_database,
    drop_pg_database,
    emit,
    hwm_mb,
    pg_dsn,
    pg_url,
    rightsdesk_migrate,
    rss_mb,
    summary_ms,
    table,
)
from bench.loadgen import JOO, OPT, Customers, MailBox, RecordingTelegram, RecordingTwilio, Stats
from tests.processes import ServeProcess, free_port, service_env

COMPLAINTS = {
    "complaint": (
        1,
        (JOO, OPT),
        ("I want to make a complaint", "You did not answer my letter for a month", "yes"),
    )
}


def fides_env(database: str, port: int, *, eager: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIDES__")}
    env.update(
        FIDES__DATABASE__SERVER="127.0.0.1",
        FIDES__DATABASE__PORT="5432",
        FIDES__DATABASE__USER="postgres",
        FIDES__DATABASE__PASSWORD="",
        FIDES__DATABASE__DB=database,
        FIDES__REDIS__HOST="127.0.0.1",
        FIDES__REDIS__PORT="6379",
        FIDES__REDIS__PASSWORD="",
        FIDES__REDIS__DB_INDEX="7",
        FIDES__REDIS__ENABLED="true",
        FIDES__CELERY__TASK_ALWAYS_EAGER="true" if eager else "false",
        # PostgreSQL here allows 100 connections, shared with whatever else runs: fides's
        # default pools (50 + 50 per engine) ran the server out of connections ("too many
        # clients already"), and 10 + 10 starved fides itself (60 s waits for a connection)
        FIDES__DATABASE__API_ENGINE_POOL_SIZE="30",
        FIDES__DATABASE__API_ENGINE_MAX_OVERFLOW="0",
        FIDES__DATABASE__TASK_ENGINE_POOL_SIZE="20",
        FIDES__DATABASE__TASK_ENGINE_MAX_OVERFLOW="0",
        FIDES__EXECUTION__REQUIRE_MANUAL_REQUEST_APPROVAL="false",
        FIDES__EXECUTION__SUBJECT_IDENTITY_VERIFICATION_REQUIRED="false",
        FIDES__SECURITY__APP_ENCRYPTION_KEY="OLMkv91j8DHiDAULnK5Lxx3kSCov30b3",
        FIDES__SECURITY__OAUTH_ROOT_CLIENT_ID="fidesadmin",
        FIDES__SECURITY__OAUTH_ROOT_CLIENT_SECRET="fidesadminsecret",
        FIDES__SECURITY__REQUEST_RATE_LIMIT="1000000/minute",
        FIDES__SECURITY__ENV="dev",
        FIDES__CLI__SERVER_HOST="127.0.0.1",
        FIDES__CLI__SERVER_PORT=str(port),
        FIDES__USER__ANALYTICS_OPT_OUT="true",
        FIDES__LOGGING__LEVEL="WARNING",
    )
    return env


async def run_fides(args: argparse.Namespace, workdir: Path, *, eager: bool) -> dict[str, Any]:
    """eager: fides as it runs with no worker (each request processed inside the creating
    call); else task_always_eager=false and a `fides worker` (Celery on Redis) beside it."""
    exe = Path(args.fides_venv) / "bin" / "fides"
    name = "ethyca-fides (no worker)" if eager else "ethyca-fides + worker"
    out: dict[str, Any] = {"service": name}
    if not exe.exists():
        out["error"] = (
            f"{exe} not found; install with: python3 -m venv {args.fides_venv} && "
            f"{args.fides_venv}/bin/pip install ethyca-fides"
        )
        return out
    version = subprocess.run(  # noqa: ASYNC221 (once, before anything is timed)
        [str(exe), "--version"], capture_output=True, text=True, timeout=120
    )
    out["version"] = version.stdout.strip() or version.stderr.strip()[-300:]
    database = await create_pg_database("rd_bench_fides")
    port = free_port()
    log_path = workdir / f"fides-{'eager' if eager else 'worker'}.log"
    env = fides_env(database, port, eager=eager)
    command = [str(exe), "webserver", "--port", str(port)]
    out["command"] = " ".join(command) + ("" if eager else f" + {exe} worker")
    worker: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 (a child we start, not wait for)
                command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            base = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            ready = await _wait_health(proc, base + "/health", args.fides_start_timeout)
            out["start_seconds"] = round(time.monotonic() - started, 1)
            if not ready:
                out["error"] = "fides webserver did not become healthy: " + _tail(log_path)
                return out
            if not eager:  # the webserver has migrated the database; now its worker
                with (workdir / "fides-worker-process.log").open("ab") as log:
                    worker = subprocess.Popen(  # noqa: ASYNC220
                        [str(exe), "worker"], cwd=workdir, env=env, stdout=log,
                        stderr=subprocess.STDOUT,
                    )  # fmt: skip
                await asyncio.sleep(8)  # celery has no health endpoint: give it time to join
            out |= await _time_fides(base, args)
            out["rss_mb"] = _tree_rss(proc.pid)
            await asyncio.sleep(3)
            out["request_statuses_after"] = await _fides_statuses(database)
            if worker is not None:
                out["worker_rss_mb"] = _tree_rss(worker.pid)
                out["worker_alive"] = worker.poll() is None
        finally:
            _stop(proc)
            if worker is not None:
                _stop(worker)
    finally:
        await drop_pg_database(database)
    if "error" not in out and not out.get("created"):
        out["error"] = "no request was created: " + _tail(log_path)
    return out


async def _fides_statuses(database: str) -> dict[str, int] | str:
    """How far fides got with the requests: privacyrequest rows by status."""
    import asyncpg

    try:
        conn = await asyncpg.connect(pg_dsn(database))
        try:
            rows = await conn.fetch("SELECT status, count(*) FROM privacyrequest GROUP BY 1")
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return {str(r[0]): int(r[1]) for r in rows}


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _tree_rss(pid: int) -> float | None:
    """RSS of a process and its children (fides may fork workers)."""
    total = rss_mb(pid) or 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            total += rss_mb(int(child)) or 0.0
    return round(total, 1) if total else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_health(proc: subprocess.Popen[bytes], url: str, within: float) -> bool:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    return False


async def _time_fides(base: str, args: argparse.Namespace) -> dict[str, Any]:
    url = base + "/api/v1/privacy-request"
    latencies: list[float] = []
    created = failed = 0
    statuses: dict[str, int] = {}
    examples: list[str] = []
    counter = iter(range(10_000_000))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        policy = await _access_policy(http, base)

        async def one() -> None:
            nonlocal created, failed
            n = next(counter)
            body = [
                {
                    "identity": {"email": f"customer{n}@example.com"},
                    "policy_key": policy,
                    "source": "Privacy Center",
                }
            ]
            t0 = time.perf_counter()
            try:
                async with http.post(url, json=body) as response:
                    data = await response.json(content_type=None)
                    statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failed += 1
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - t0)
            ok = isinstance(data, dict) and data.get("succeeded")
            if ok:
                created += len(data["succeeded"])
            else:
                failed += 1
                if len(examples) < 3:
                    examples.append(str(data)[:300])

        for _ in range(3):  # warm-up
            await one()
        latencies.clear()
        created = failed = 0
        deadline = time.perf_counter() + args.duration
        started = time.perf_counter()

        async def seat() -> None:
            for _ in range(100_000):
                if time.perf_counter() >= deadline:
                    return
                await one()

        await asyncio.gather(*(seat() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "policy_key": policy,
        "clients_at_once": args.concurrency,
        "seconds": round(elapsed, 2),
        "created": created,
        "failed": failed,
        "statuses": statuses,
        "failure_examples": examples,
        "created_per_s": round(created / elapsed, 1),
        "latency": summary_ms(latencies),
    }


async def _access_policy(http: aiohttp.ClientSession, base: str) -> str:
    """The default access policy's key (listed with the root OAuth client's token)."""
    form = {"client_id": "fidesadmin", "client_secret": "fidesadminsecret"}
    try:
        async with http.post(base + "/api/v1/oauth/token", data=form) as response:
            token = (await response.json()).get("access_token")
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(base + "/api/v1/dsr/policy", headers=headers) as response:
            items = (await response.json()).get("items", [])
        keys = [item["key"] for item in items]
    except (aiohttp.ClientError, ValueError, KeyError):
        keys = []
    for key in keys:
        if "access" in key:
            return str(key)
    return keys[0] if keys else "default_access_policy"


async def run_rightsdesk(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    name = await create_pg_database("rd_bench_peer")
    url = pg_url(name)
    out: dict[str, Any] = {"service": "rightsdesk", "what": "WhatsApp complaint, 3 webhooks"}
    try:
        rightsdesk_migrate(url)
        loop = asyncio.get_running_loop()
        async with RecordingTelegram() as telegram, RecordingTwilio() as twilio:
            with MailBox(loop) as mail:
                env = service_env(url, telegram, twilio, SMTP_URL=mail.url)
                serve = await ServeProcess(env, workdir, "serve-peer").start(timeout=60)
                assert serve.proc is not None
                try:
                    connector = aiohttp.TCPConnector(limit=0)
                    async with aiohttp.ClientSession(connector=connector) as http:
                        customers = Customers(http, serve.url, twilio, mail, scripts=COMPLAINTS)
                        await _converse(customers, 3, Stats())  # warm-up
                        stats = Stats()
                        started = time.perf_counter()
                        await _closed(customers, args.concurrency, args.duration, stats)
                        elapsed = time.perf_counter() - started
                    filed = stats.conversations["complaint"]
                    # the filing call is every third webhook ("yes")
                    filing_webhooks = stats.webhook[2::3]
                    out |= {
                        "clients_at_once": args.concurrency,
                        "seconds": round(elapsed, 2),
                        "created": filed,
                        "created_per_s": round(filed / elapsed, 1),
                        "latency": summary_ms(filing_webhooks),
                        "webhook_latency_all": summary_ms(stats.webhook),
                        "filed_answer_latency": summary_ms(stats.reply[2::3]),
                        "no_answer": stats.no_reply,
                        "rss_mb": rss_mb(serve.proc.pid),
                        "peak_rss_mb": hwm_mb(serve.proc.pid),
                    }
                finally:
                    serve.stop()
    finally:
        await drop_pg_database(name)
    return out


async def _converse(customers: Customers, count: int, stats: Stats) -> None:
    for _ in range(count):
        await customers.converse(customers.new_customer(), stats)


async def _closed(customers: Customers, concurrency: int, duration: float, stats: Stats) -> None:
    from bench.loadgen import closed_loop

    await closed_loop(customers, concurrency, duration, stats)


def render(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        if "error" in r:
            rows.append((r["service"], "could not run", r["error"].splitlines()[0][:90], "", ""))
            continue
        lat = r["latency"]
        rows.append(
            (
                r["service"],
                f"{r['clients_at_once']} clients, {r['seconds']} s",
                r["created_per_s"],
                f"{lat['p50_ms']} / {lat['p99_ms']}",
                r.get("rss_mb"),
            )
        )
    return table(
        rows, ["service", "load", "requests filed/s", "filing call p50 / p99 ms", "RSS MB"]
    )


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rd-bench-peer-"))
    results = []
    try:
        for eager in (False,) if args.quick else (True, False):
            print(f"… fides (eager={eager})", file=sys.stderr, flush=True)
            try:
                results.append(await run_fides(args, workdir, eager=eager))
            except Exception as exc:  # the peer failing is a result, not a crash
                name = f"ethyca-fides (eager={eager})"
                results.append({"service": name, "error": f"{type(exc).__name__}: {exc}"})
        print("… rightsdesk", file=sys.stderr, flush=True)
        results.append(await run_rightsdesk(args, workdir))
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    settings = {"concurrency": args.concurrency, "duration": args.duration}
    emit(
        "peer_fides-quick" if args.quick else "peer_fides",
        {"settings": settings, "results": results},
        render(results),
        args.json,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fides-venv", default="/tmp/fides-venv")  # noqa: S108
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--fides-start-timeout", type=float, default=240.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 5.0
    return args


def main() -> None:
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
