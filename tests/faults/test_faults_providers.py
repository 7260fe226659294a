"""Twilio and Telegram answering 500 and 429 for a minute: the outbox holds every answer
and then delivers everything, in order per customer, nothing twice.

50 WhatsApp and 50 Telegram customers write their three messages while both providers
refuse every call: Twilio answers 429 for the first half of the outage and 500 for the
second, Telegram 500 for the first half and 429 with `retry_after` (its contract's
`ResponseParameters.retry_after`; Twilio's contract has no Retry-After) for the second.

Each recipient's oldest message is retried with exponential backoff (2 s doubling, ±20 %),
so after a minute-long outage a WhatsApp answer's next try can be up to ~77 s away: the
test gives the drain two minutes. (Telegram's 429 comes last on purpose: its `retry_after`
is honoured, so Telegram's answers go out within seconds of the end.)
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

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

WHATSAPP, TELEGRAM = 50, 50
CUSTOMERS = WHATSAPP + TELEGRAM
OUTAGE = 60.0
DRAIN = 120.0  # seconds after the outage for every answer to arrive
TELEGRAM_RETRY_AFTER = 3


@pytest.mark.timeout(360)
async def test_twilio_and_telegram_down_with_500_and_429_for_a_minute(
    postgres_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FAULTS_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    random.seed(seed)
    async with (
        SlowTelegram() as telegram,
        SlowTwilio() as twilio,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        serve = await ServeProcess(service_env(postgres_url, telegram, twilio), tmp_path).start()
        endpoint, traffic = Endpoint(), Traffic()
        endpoint.url = serve.url
        customers: list[Customer] = [WhatsAppCustomer(twilio, n) for n in range(WHATSAPP)]
        customers += [TelegramCustomer(telegram, n) for n in range(TELEGRAM)]
        try:
            down_at = time.monotonic()
            twilio.set_outage(429)
            telegram.set_outage(500)
            # No answer comes, so people type on: all three messages within ~10 s.
            talks = [
                c.converse(
                    http,
                    endpoint,
                    traffic,
                    start_after=rng.uniform(0, 6),
                    think=(0.2, 1.5),
                    timeout=30,
                    await_answers=False,
                )
                for c in customers
            ]
            await asyncio.gather(*talks)
            await asyncio.sleep(OUTAGE / 2 - (time.monotonic() - down_at))
            twilio.set_outage(500)
            telegram.set_outage(429, retry_after=TELEGRAM_RETRY_AFTER)
            await asyncio.sleep(OUTAGE - (time.monotonic() - down_at))
            # The outbox holds every answer; none went out, none was given up on.
            held_in, held_out = await in_flight(postgres_url)
            during = await ledger(postgres_url)
            delivered_during = len(twilio.sent_messages()) + len(telegram.sent_messages())
            twilio.clear_outage()
            telegram.clear_outage()
            up_at = time.monotonic()
            deadline = up_at + DRAIN
            answered = await asyncio.gather(*(c.answered(deadline) for c in customers))
            drained = time.monotonic() - up_at
            await asyncio.sleep(3)  # room for a late duplicate to show up
        finally:
            serve.stop()
    verdict = judge(customers)
    held = await ledger(postgres_url)
    refused = Counter(c.status for c in twilio.failed_calls) + Counter(
        c.status for c in telegram.failed_calls
    )
    print(
        f"\nfaults: provider outage seconds={up_at - down_at:.0f} customers={CUSTOMERS} "
        f"answers held={held_out} delivered after={3 * CUSTOMERS - verdict.lost} "
        f"lost={verdict.lost} duplicates={verdict.duplicates} out of order={len(verdict.wrong)} "
        f"(drained {drained:.0f}s after the outage, seed={seed}, refused calls={dict(refused)})"
    )
    assert delivered_during == 0
    assert (held_in, held_out) == (0, 3 * CUSTOMERS)
    assert during.outbox.get("failed", 0) == 0
    assert refused[500] > 0 and refused[429] > 0
    assert all(answered)
    # Everything delivered, once, in order per customer.
    assert verdict.wrong == [], verdict.wrong[:5]
    assert (verdict.completed, verdict.lost, verdict.duplicates) == (CUSTOMERS, 0, 0)
    assert len(twilio.sent_messages()) == 3 * WHATSAPP
    assert len(telegram.sent_messages()) == 3 * TELEGRAM
    assert twilio.violations == [] and telegram.violations == []
    assert held.tickets == CUSTOMERS and set(held.tickets_per_requester.values()) == {1}
    assert held.outbox == {"sent": 3 * CUSTOMERS}
