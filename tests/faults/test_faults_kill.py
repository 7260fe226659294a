"""`kill -9` of `serve` at random moments while 100 customers are mid-conversation.

Each customer files a marketing opt-out through the menu (three messages, three answers,
one resolved ticket): 70 on WhatsApp, 30 on Telegram. The simulated Twilio and Telegram
post every message until it is acknowledged (same MessageSid or update_id), as they do
when a webhook gets no answer. The server is SIGKILLed five times and restarted after each
kill; the customers go on throughout. Afterwards: every conversation completed, every
ticket exists once, no answer lost, every WhatsApp answer sent once.

Telegram's count of duplicates is bounded rather than exact: Twilio can be asked what it
already took (`find_sent`), so a kill between Twilio accepting a message and our commit of
"sent" does not send it twice, but Telegram has no such lookup (README, "Outbound"). A
Telegram answer accepted in the milliseconds before a kill can arrive twice; at most the
sends under way at that moment (one outbox batch) per kill. The figure is printed.

The kill moments come from a seed that is printed (`FAULTS_SEED=… pytest …` replays it).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import aiohttp
import pytest

from bot.outbox import LEASE, OutboxWorker
from tests.faults.sim import (
    Customer,
    Endpoint,
    SlowTelegram,
    SlowTwilio,
    TelegramCustomer,
    Traffic,
    WhatsAppCustomer,
    in_flight,
    judge,
    ledger,
)
from tests.processes import ServeProcess, service_env

WHATSAPP, TELEGRAM = 70, 30
CUSTOMERS = WHATSAPP + TELEGRAM
KILLS = 5


async def _kill_and_restart(
    database_url: str, tmp_path: Path, seed: int
) -> tuple[list[Customer], SlowTwilio, SlowTelegram, Traffic, list[tuple[int, int, int]], float]:
    rng = random.Random(seed)
    random.seed(seed)  # the customers' think times and retry jitter
    async with (
        SlowTelegram() as telegram,
        SlowTwilio() as twilio,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        env = service_env(database_url, telegram, twilio)
        endpoint, traffic = Endpoint(), Traffic()
        customers: list[Customer] = [WhatsAppCustomer(twilio, n) for n in range(WHATSAPP)]
        customers += [TelegramCustomer(telegram, n) for n in range(TELEGRAM)]
        serve = await ServeProcess(env, tmp_path, "serve-0").start()
        endpoint.url = serve.url
        started = time.monotonic()
        talks = [
            asyncio.create_task(
                c.converse(
                    http,
                    endpoint,
                    traffic,
                    start_after=rng.uniform(0, 16),
                    think=(0.3, 2.0),
                    timeout=75,
                )
            )
            for c in customers
        ]
        kills: list[tuple[int, int, int]] = []  # (customers mid-conversation, inbox, outbox)
        try:
            for k in range(KILLS):
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                mid = sum(c.started and not c.finished for c in customers)
                serve.kill()  # the endpoint keeps pointing at the dead port: refused, retried
                waiting_in, waiting_out = await in_flight(database_url)
                kills.append((mid, waiting_in, waiting_out))
                await asyncio.sleep(rng.uniform(0, 1.0))
                serve = await ServeProcess(env, tmp_path, f"serve-{k + 1}").start()
                endpoint.url = serve.url
            await asyncio.gather(*talks)
            # A send the last kill interrupted stays claimed until its lease runs out; the
            # outbox then settles it (asks Twilio, or sends to Telegram again): wait for that.
            settle_by = time.monotonic() + LEASE.total_seconds() + 15
            while time.monotonic() < settle_by and (await in_flight(database_url))[1]:
                await asyncio.sleep(1)
            await asyncio.sleep(3)  # room for a late duplicate to show up
        finally:
            for talk in talks:
                talk.cancel()
            serve.stop()
        return customers, twilio, telegram, traffic, kills, time.monotonic() - started


@pytest.mark.timeout(300)
async def test_kill_9_five_times_with_100_customers_mid_conversation(
    database_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FAULTS_SEED", time.time_ns() % 2**32))
    customers, twilio, telegram, traffic, kills, took = await _kill_and_restart(
        database_url, tmp_path, seed
    )
    verdict = judge(customers)
    on_whatsapp = judge([c for c in customers if c.channel == "whatsapp"])
    on_telegram = judge([c for c in customers if c.channel == "telegram"])
    held = await ledger(database_url)
    engine = database_url.split("+", 1)[0]
    print(
        f"\nfaults: kills survived={len(kills)} customers={verdict.customers} "
        f"completed={verdict.completed} tickets={held.tickets} lost={verdict.lost} "
        f"duplicates whatsapp={on_whatsapp.duplicates} telegram={on_telegram.duplicates} "
        f"({engine}, {took:.0f}s, seed={seed}, "
        f"at each kill mid-conversation/inbox/outbox={kills}, webhooks={dict(traffic.statuses)})"
    )
    # Every kill hit customers mid-conversation.
    assert len(kills) == KILLS and all(mid > 0 for mid, _, _ in kills), kills
    # Every conversation completed, every answer arrived, in order; once on WhatsApp.
    assert verdict.wrong == [], verdict.wrong[:5]
    assert (verdict.completed, verdict.lost) == (CUSTOMERS, 0)
    assert on_whatsapp.duplicates == 0
    assert on_telegram.duplicates <= KILLS * OutboxWorker.batch
    assert len(twilio.sent_messages()) == 3 * WHATSAPP
    assert len(telegram.sent_messages()) == 3 * TELEGRAM + on_telegram.duplicates
    assert twilio.violations == [] and telegram.violations == []
    # Every ticket once, one per customer; every message stored once and processed.
    assert held.tickets == CUSTOMERS
    assert held.ticket_kinds == {"marketing_opt_out": CUSTOMERS}
    assert len(held.tickets_per_requester) == CUSTOMERS
    assert set(held.tickets_per_requester.values()) == {1}
    assert (held.inbound, held.inbound_unprocessed, held.inbound_parked) == (3 * CUSTOMERS, 0, 0)
    assert held.outbox == {"sent": 3 * CUSTOMERS}, held.unsent
    # The kills were felt: some webhooks went unanswered and were retried.
    assert traffic.statuses["no answer"] > 0
