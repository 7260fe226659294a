"""The clock end to end, through real APScheduler and real time (deadlines of seconds):
`rightsdesk serve` killed with SIGKILL and restarted between a reminder and the escalation
sends neither twice nor never; `rightsdesk clock` alone wakes exactly when work is due."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from bot.scheduler import PASS_INTERVAL, run_clock
from bot.settings import Settings
from bot.tenants import load_tenants
from storage import tickets
from storage.db import create_engine, session_factory, transaction
from storage.models import OutboundMessage, utcnow
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio
from tests.processes import ServeProcess, service_env
from tests.service import eventually

STAFF_CHAT = -1009999
ADMIN = 4343


def tenant_file(before: str, every: str, deadline: str) -> str:
    return f"""
name = "Clock Test"
ref_prefix = "CT"
timezone = "Asia/Karachi"
calendar = "PK"
languages = ["en"]
privacy_email = "privacy@clock-test.example"
clock_starts = "received"
unverified_expire_after = "14 days"

[channels]
whatsapp_numbers = ["+14155239991"]
telegram_start = "clock-test"
staff_chat_id = {STAFF_CHAT}
staff_user_ids = [4242, {ADMIN}]
admin_user_ids = [{ADMIN}]

[requests]
erasure = "{deadline}"

[reminders]
before = ["{before}"]
overdue_every = "{every}"
"""


def tenants_dir(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "tenants"
    folder.mkdir()
    (folder / "clock-test.toml").write_text(text)
    return folder


async def file_tickets(database_url: str, start: datetime, *deadlines: timedelta) -> list[str]:
    """Open erasure tickets that started at `start`; their references."""
    engine = create_engine(database_url)
    try:
        async with transaction(session_factory(engine)) as session:
            refs = []
            for deadline in deadlines:
                ticket = await tickets.create_ticket(
                    session,
                    tenant="clock-test",
                    ref_prefix="CT",
                    kind="erasure",
                    channel="telegram",
                    received_at=start,
                    due_at=start + deadline,
                    clock_started_at=start,
                )
                refs.append(ticket.ref)
            return refs
    finally:
        await engine.dispose()


async def sleep_until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - utcnow()).total_seconds()))


@pytest.mark.timeout(240)
async def test_reminder_and_escalation_across_a_kill_and_restart(
    database_url: str, tmp_path: Path
) -> None:
    """A: due at T0+100 s, reminded 85 s before (T0+15 s), while the first server runs.
    The server is killed at ~T0+18 s and restarted at T0+32 s, so B's reminder (due at
    T0+110 s, reminded at T0+25 s) falls in the downtime and must come once after it.
    Then both escalations reach the admin, once each."""
    folder = tenants_dir(tmp_path, tenant_file("85 seconds", "30 seconds", "100 seconds"))
    async with FakeTelegram() as telegram, FakeTwilio() as twilio:
        env = service_env(database_url, telegram, twilio, TENANTS_DIR=str(folder))
        start = utcnow()
        ref_a, ref_b = await file_tickets(
            database_url, start, timedelta(seconds=100), timedelta(seconds=110)
        )

        def staff_about(ref: str) -> list[str]:
            texts = [c.params["text"] for c in telegram.sent_messages(chat_id=STAFF_CHAT)]
            return [t for t in texts if ref in t]

        def admin_about(ref: str) -> list[str]:
            texts = [c.params["text"] for c in telegram.sent_messages(chat_id=ADMIN)]
            return [t for t in texts if ref in t]

        first = await ServeProcess(env, tmp_path, "first").start()
        try:
            await eventually(lambda: staff_about(ref_a), timeout=30)
            assert utcnow() >= start + timedelta(seconds=15)
            await sleep_until(start + timedelta(seconds=18))
        finally:
            first.kill()
        assert staff_about(ref_b) == []  # its time (T0+25 s) has not come yet

        await sleep_until(start + timedelta(seconds=32))
        second = await ServeProcess(env, tmp_path, "second").start()
        try:
            await eventually(lambda: staff_about(ref_b), timeout=30)
            await eventually(lambda: admin_about(ref_a), timeout=90)
            assert utcnow() >= start + timedelta(seconds=100)
            await eventually(lambda: admin_about(ref_b), timeout=30)
            await asyncio.sleep(2)  # time for any duplicate to show up
        finally:
            second.stop()

        assert len(staff_about(ref_a)) == 1, staff_about(ref_a)
        assert len(staff_about(ref_b)) == 1, staff_about(ref_b)
        assert staff_about(ref_a)[0].startswith(f"⏰ Reminder: {ref_a} (erasure) is due in")
        assert [t.split(":")[0] for t in admin_about(ref_a) + admin_about(ref_b)] == [
            "🚨 Overdue",
            "🚨 Overdue",
        ]
        assert telegram.violations == []


async def test_the_clock_command_alone_wakes_when_work_is_due(
    database_url: str, tmp_path: Path
) -> None:
    """`rightsdesk clock`: the reminder (T0+3 s) and the escalation (T0+8 s) are queued
    on time, long before the regular 15-second pass would have found them."""
    folder = tenants_dir(tmp_path, tenant_file("5 seconds", "1 hour", "8 seconds"))
    settings = Settings(_env_file=None, database_url=database_url, tenants_dir=folder)  # type: ignore[call-arg]
    start = utcnow()
    (ref,) = await file_tickets(database_url, start, timedelta(seconds=8))
    engine = create_engine(database_url)
    stop = asyncio.Event()
    clock = asyncio.create_task(run_clock(settings, load_tenants(folder), stop=stop))
    try:

        async def queued() -> list[OutboundMessage]:
            async with session_factory(engine)() as session:
                rows = await session.exec(select(OutboundMessage).order_by(col(OutboundMessage.id)))
                return list(rows)

        reminder_at = escalation_at = None
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline and escalation_at is None:
            rows = await queued()
            if len(rows) >= 1 and reminder_at is None:
                reminder_at = utcnow()
            if len(rows) >= 2:
                escalation_at = utcnow()
            await asyncio.sleep(0.1)
        rows = await queued()
        assert [r.recipient for r in rows] == [str(STAFF_CHAT), str(ADMIN)]
        assert ref in rows[0].payload["text"] and ref in rows[1].payload["text"]
        assert reminder_at is not None and escalation_at is not None
        assert start + timedelta(seconds=3) <= reminder_at < start + timedelta(seconds=6)
        assert start + timedelta(seconds=8) <= escalation_at < start + PASS_INTERVAL
    finally:
        stop.set()
        await asyncio.wait_for(clock, timeout=10)
        await engine.dispose()
