"""One scheduler pass (`bot.reminders.ReminderPass.run`) in a process of its own, so that
the benchmark can stop a pass that runs too long by ending the process (its open batch
rolls back; the batches it committed stay done) and read the progress from the database.

Each line also says how long the pass's batches held their transaction (on SQLite, the
database's write lock, which webhooks wait behind) and the process's peak RSS.

    python -m bench.scheduler_pass DATABASE_URL [BATCH]   # prints one JSON line per pass
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import bot.reminders
from bench.common import summary_ms
from bot.reminders import PassReport, ReminderPass
from bot.settings import Settings
from bot.tenants import Tenant, Tenants, load_tenants
from storage import crypto
from storage.db import SessionFactory, create_engine, session_factory, transaction
from storage.models import utcnow

BATCHES: list[float] = []  # seconds each batch's transaction lasted, lock wait included
IN_SETS: list[float] = []  # seconds each planning in sets took (`ReminderPass.plan_in_sets`)


@asynccontextmanager
async def timed_transaction(factory: SessionFactory) -> AsyncIterator[object]:
    started = time.perf_counter()
    try:
        async with transaction(factory) as session:
            yield session
    finally:
        BATCHES.append(time.perf_counter() - started)


def timed_in_sets(job: ReminderPass) -> None:
    """Time this job's plannings in sets (the catch-up's planning, apart from its sending)."""
    plan_in_sets = job.plan_in_sets

    async def timed(*args: Any, **kwargs: Any) -> int | None:
        started = time.perf_counter()
        try:
            return await plan_in_sets(*args, **kwargs)
        finally:
            IN_SETS.append(time.perf_counter() - started)

    job.plan_in_sets = timed  # type: ignore[method-assign]


def batch_figures() -> dict[str, object]:
    if not BATCHES:
        return {"batches": 0}
    ms = sorted(1000 * s for s in BATCHES)
    return {
        "batches": len(ms),
        "batch_ms_p50": round(statistics.median(ms), 1),
        "batch_ms_p95": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
        "batch_ms_max": round(ms[-1], 1),
    }


async def new_policies(job: ReminderPass) -> ReminderPass:
    """A process that loads changed tenant files: each tenant's staff are now also reminded
    6 hours before a deadline. Its first pass adopts the new policies
    (`ReminderPass.adopt_policies`): every open ticket is planned again, and the next
    looks that change (the 4-hour reminder or the deadline itself, with more than 6 hours
    to go) are written."""
    changed = []
    for tenant in job.tenants:
        data = tenant.model_dump(mode="json")
        data["reminders"]["before"] = [*data["reminders"]["before"], "6 hours"]
        changed.append(Tenant.model_validate(data))
    fresh = ReminderPass(job.sessions, Tenants(changed), now=job.now, batch=job.batch)
    timed_in_sets(fresh)
    return fresh


REGULAR = 40  # passes in the "regular" series
MAX_PASSES = 200  # a catch-up that needs more than this is reported as it stands


async def catch_up(job: ReminderPass) -> tuple[PassReport, list[float]]:
    """Passes one after another until one leaves nothing (as `Clock.tick` runs them):
    what they did in all, and how long each took."""
    total, seconds = PassReport(), []
    while len(seconds) < MAX_PASSES:
        started = time.perf_counter()
        report = await job.run()
        seconds.append(time.perf_counter() - started)
        total.add(report)
        if not report.more:
            break
    return total, seconds


async def regular_passes(job: ReminderPass) -> dict[str, object]:
    """The pass as the scheduler runs it (every 15 s in `serve`), `REGULAR` times in a
    row at the present moment: what is due meanwhile is sent. Its p50/p95."""
    seconds: list[float] = []
    sent = 0
    job.now = utcnow
    for _ in range(REGULAR):
        started = time.perf_counter()
        report = await job.run()
        seconds.append(time.perf_counter() - started)
        sent += report.sent
    return {"pass": "regular", **summary_ms(seconds), "sent": sent}


async def main_async(database_url: str, batch: int | None) -> None:
    settings = Settings(_env_file=None)
    crypto.configure(settings.keyring())  # histories are sealed, as in `serve`
    tenants = load_tenants(settings.tenants_dir)
    engine = create_engine(database_url)
    bot.reminders.transaction = timed_transaction  # type: ignore[assignment]
    try:
        job = ReminderPass(session_factory(engine), tenants)
        if batch is not None:
            job.batch = batch
        timed_in_sets(job)
        # cold: every active ticket unplanned (after a bulk load); warm: right after, with
        # everything planned, then the regular series (`regular_passes`); new policy: every
        # tenant's reminder policy changed, so its open tickets are planned again, what was
        # due already sent (timed with the unplanning); a day later: the pass after the
        # clock was stopped for 24 hours, every reminder, escalation and expiry of that day
        # due at once.
        for name, ahead in (("cold", 0), ("warm", 0), ("new policy", 0), ("day later", 24)):
            BATCHES.clear()
            IN_SETS.clear()
            job.now = lambda ahead=ahead: utcnow() + timedelta(hours=ahead)
            started = time.perf_counter()
            if name == "new policy":
                job = await new_policies(job)
            report, passes = await catch_up(job)
            line = {
                "pass": name,
                "seconds": round(time.perf_counter() - started, 3),
                # each pass takes a slice (`ReminderPass.slice`); the scheduler runs the
                # next at once (`Clock.tick`)
                "passes": len(passes),
                "longest_pass_s": round(max(passes), 3),
                "pass_seconds": [round(p, 3) for p in passes],
                "planned_in_sets": report.planned,
                "in_sets_seconds": round(sum(IN_SETS), 3),
                "looked_at": report.looked_at,
                "sent": report.sent,
                "already_sent": report.already_sent,
                "failed": report.failed,
                "by_kind": {str(k): v for k, v in report.by_kind.items()},
                "batch": job.batch,
                **batch_figures(),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
            print(json.dumps(line), flush=True)
            if name == "warm":
                print(json.dumps(await regular_passes(job)), flush=True)
    finally:
        await engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main_async(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None))


if __name__ == "__main__":
    main()
