"""The scheduler: APScheduler only wakes the reminder pass; the database decides what it does.

One interval job runs a pass every `PASS_INTERVAL` (15 s), which also picks up tickets that
are new or changed since the last one. After each pass the clock asks the database for the
earliest planned next look (`ticket_clock`) and, when that comes before the next regular
run, adds a one-off job for that moment: reminders go out on time without polling every second.
Several processes may run this side by side on one PostgreSQL database (`serve` and
`clock`, or many of each): each reminder is claimed by exactly one of them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.reminders import ReminderPass
from bot.retention import purge
from bot.settings import Settings
from bot.tenants import Tenants
from storage import reminders as store
from storage.admin_queries import compact_counts
from storage.db import (
    SessionFactory,
    create_engine,
    is_empty,
    migrate,
    session_factory,
    transaction,
)
from storage.models import utcnow

log = logging.getLogger(__name__)

PASS_INTERVAL = timedelta(seconds=15)
MIN_GAP = timedelta(milliseconds=500)  # a precise wake never comes sooner than this
# Passes one wake runs back to back at most: a catch-up's slices (`ReminderPass.slice`:
# 2,000,000 tickets), and a bound should a slice keep coming back (its tickets held by
# another process)
MAX_PASSES_AT_ONCE = 100
RETENTION_INTERVAL = timedelta(hours=1)
RETENTION_FIRST = timedelta(minutes=1)  # not in the way of a start-up
COUNTS_INTERVAL = timedelta(seconds=30)  # folds the admin list's per-status counts
_REGULAR, _SOON, _RETENTION = "clock-pass", "clock-soon", "clock-retention"
_COUNTS = "clock-counts"


class Clock:
    """Runs `ReminderPass` from an `AsyncIOScheduler` in this process's event loop."""

    def __init__(
        self,
        sessions: SessionFactory,
        tenants: Tenants,
        *,
        now: Callable[[], datetime] = utcnow,
        interval: timedelta | None = None,
    ) -> None:
        self.reminders = ReminderPass(sessions, tenants, now=now)
        self.interval = interval if interval is not None else PASS_INTERVAL
        self.tenants = tenants
        self.now = now
        self.passes = 0
        self._sessions = sessions
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._lock = asyncio.Lock()
        self._again = False
        self._stopping = False

    def start(self) -> None:
        """Start the scheduler in the running loop; the first pass runs at once."""
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval.total_seconds(),
            next_run_time=datetime.now(UTC),
            id=_REGULAR,
        )
        self._scheduler.add_job(
            self.retain,
            "interval",
            seconds=RETENTION_INTERVAL.total_seconds(),
            next_run_time=datetime.now(UTC) + RETENTION_FIRST,
            id=_RETENTION,
        )
        self._scheduler.add_job(
            self.fold_counts,
            "interval",
            seconds=COUNTS_INTERVAL.total_seconds(),
            id=_COUNTS,
        )
        self._scheduler.start()
        log.info("clock started: a pass every %ss", self.interval.total_seconds())

    async def stop(self, *, grace: float = 10.0) -> None:
        """Let a running pass finish (for up to `grace` seconds), then stop scheduling.

        A pass still running after that is cancelled: its transaction rolls back and the
        next process to run a pass does its work.
        """
        self._stopping = True
        with suppress(TimeoutError):
            async with asyncio.timeout(grace), self._lock:
                pass
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next turn

    async def retain(self) -> None:
        """The retention pass (bot.retention): redactions, deletions, housekeeping."""
        if self._stopping:
            return
        try:
            report = await purge(self._sessions, self.tenants, now=self.now())
        except Exception:  # as a reminder pass: logged, and the next run tries again
            log.exception("retention pass failed; the next one tries again")
            return
        for line in report.lines():
            log.info("retention: %s", line)

    async def fold_counts(self) -> None:
        """Fold the per-status count deltas (`admin_queries.compact_counts`)."""
        if self._stopping:
            return
        try:
            async with transaction(self._sessions) as session:
                await compact_counts(session)
        except Exception:  # harmless to skip: the counts stay exact, only less compact
            log.exception("folding the ticket counts failed; the next run tries again")

    async def tick(self) -> None:
        """One pass; a wake that arrives during a pass makes that pass run once more."""
        if self._stopping:
            return
        if self._lock.locked():
            self._again = True
            return
        async with self._lock:
            wake: datetime | None = None
            for passes in range(1, MAX_PASSES_AT_ONCE + 1):
                self._again = False
                wake, more = await self._pass()
                if self._stopping or not (self._again or more):
                    break
                if passes == MAX_PASSES_AT_ONCE:  # the regular run goes on from there
                    log.warning("clock: %d passes in a row; the next run goes on", passes)
        self._wake_at(wake)

    async def _pass(self) -> tuple[datetime | None, bool]:
        """One pass: the next planned look, and whether the pass left tickets to look at
        (a catch-up goes in slices, `ReminderPass.slice`), so that another pass should
        follow at once."""
        try:
            report = await self.reminders.run()
            async with self._sessions() as session:
                wake = await store.next_wake(session)
        except Exception:  # the scheduler must outlive a database hiccup; logged, retried
            log.exception("clock pass failed; the next pass tries again")
            return None, False
        self.passes += 1
        return wake, report.more

    def _wake_at(self, wake: datetime | None) -> None:
        """Add a one-off run at `wake` when the regular run would come later."""
        if wake is None or self._stopping or not self._scheduler.running:
            return
        regular = self._scheduler.get_job(_REGULAR)
        next_regular = regular.next_run_time if regular is not None else None
        if next_regular is not None and wake >= next_regular:
            return
        run_date = max(wake, datetime.now(UTC) + MIN_GAP)
        self._scheduler.add_job(
            self.tick, "date", run_date=run_date, id=_SOON, replace_existing=True
        )


async def run_clock(
    settings: Settings, tenants: Tenants, *, stop: asyncio.Event | None = None
) -> None:
    """`rightsdesk clock`: only the scheduler, until SIGINT or SIGTERM (or `stop` is set)."""
    engine = create_engine(settings.database_url)
    try:
        if settings.is_sqlite and await is_empty(engine):
            log.info("empty SQLite database: applying migrations")
            await migrate(engine)
        clock = Clock(session_factory(engine), tenants)
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                with suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signum, stop.set)
        clock.start()
        await stop.wait()
        log.info("clock stopping")
        await clock.stop()
    finally:
        await engine.dispose()
