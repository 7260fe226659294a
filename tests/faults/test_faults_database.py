"""PostgreSQL unreachable for 30 seconds under load.

The shared PostgreSQL server is not stopped (other tests use it); instead `serve` reaches
its database through a TCP relay in the test, which is cut for 30 s: every connection is
dropped and new ones are refused, as when the database restarts. 100 customers (60 on
WhatsApp, 40 on Telegram) are mid-conversation. While nothing can be stored, webhooks must
answer 503 so that the providers retry, and `/readyz` must say so; once the relay is back
everything resumes, and with the providers retrying nothing is lost or sent twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import make_url

from tests.faults.sim import (
    Customer,
    Endpoint,
    SlowTelegram,
    SlowTwilio,
    TcpProxy,
    TelegramCustomer,
    Traffic,
    WhatsAppCustomer,
    judge,
    ledger,
)
from tests.processes import ServeProcess, service_env

WHATSAPP, TELEGRAM = 60, 40
CUSTOMERS = WHATSAPP + TELEGRAM
OUTAGE = 30.0


async def _readyz(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/readyz") as response:
        return response.status


@pytest.mark.timeout(240)
async def test_postgres_unreachable_for_30_seconds_under_load(
    postgres_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FAULTS_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    random.seed(seed)
    direct = make_url(postgres_url)
    proxy = await TcpProxy(direct.host or "127.0.0.1", direct.port or 5432).start()
    relayed = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    async with (
        SlowTelegram() as telegram,
        SlowTwilio() as twilio,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        serve = await ServeProcess(service_env(relayed, telegram, twilio), tmp_path).start()
        endpoint, traffic = Endpoint(), Traffic()
        endpoint.url = serve.url
        customers: list[Customer] = [WhatsAppCustomer(twilio, n) for n in range(WHATSAPP)]
        customers += [TelegramCustomer(telegram, n) for n in range(TELEGRAM)]
        started = time.monotonic()
        talks = [
            asyncio.create_task(
                c.converse(
                    http,
                    endpoint,
                    traffic,
                    start_after=rng.uniform(0, 12),
                    think=(0.3, 2.0),
                    timeout=100,
                )
            )
            for c in customers
        ]
        try:
            await asyncio.sleep(5)
            mid = sum(c.started and not c.finished for c in customers)
            await proxy.cut()
            cut_at = time.monotonic()
            await asyncio.sleep(2)
            ready_during = await _readyz(http, serve.url)
            await asyncio.sleep(OUTAGE - (time.monotonic() - cut_at))
            restored_at = time.monotonic()
            await proxy.restore()
            await asyncio.gather(*talks)
            ready_after = await _readyz(http, serve.url)
            await asyncio.sleep(3)  # room for a late duplicate to show up
        finally:
            for talk in talks:
                talk.cancel()
            serve.stop()
            await proxy.stop()
    took = time.monotonic() - started
    verdict = judge(customers)
    held = await ledger(postgres_url)
    during = traffic.between(cut_at + 0.5, restored_at)
    print(
        f"\nfaults: database outage seconds={restored_at - cut_at:.0f} customers={CUSTOMERS} "
        f"completed={verdict.completed} tickets={held.tickets} lost={verdict.lost} "
        f"duplicates={verdict.duplicates} webhooks answered 503 during it={during['503']} "
        f"({took:.0f}s, seed={seed}, mid-conversation at the cut={mid}, "
        f"webhooks={dict(traffic.statuses)})"
    )
    assert mid > 0
    # While nothing could be stored, every webhook was told to retry, and nothing else.
    assert during["503"] > 0 and set(during) == {"503"}, during
    assert (ready_during, ready_after) == (503, 200)
    # Afterwards: everything resumed; nothing lost, nothing twice.
    assert verdict.wrong == [], verdict.wrong[:5]
    assert (verdict.completed, verdict.lost, verdict.duplicates) == (CUSTOMERS, 0, 0)
    assert len(twilio.sent_messages()) == 3 * WHATSAPP
    assert len(telegram.sent_messages()) == 3 * TELEGRAM
    assert twilio.violations == [] and telegram.violations == []
    assert held.tickets == CUSTOMERS
    assert held.ticket_kinds == {"marketing_opt_out": CUSTOMERS}
    assert len(held.tickets_per_requester) == CUSTOMERS
    assert set(held.tickets_per_requester.values()) == {1}
    assert (held.inbound, held.inbound_unprocessed, held.inbound_parked) == (3 * CUSTOMERS, 0, 0)
    assert held.outbox == {"sent": 3 * CUSTOMERS}
