"""Crash and scale-out: `kill -9` with messages in the outbox, and two `serve` processes
sharing one PostgreSQL database. Each customer must get each message exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp

from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio, inbound_whatsapp_form, sign_twilio_request
from tests.processes import ServeProcess, service_env
from tests.service import PUBLIC, WEBHOOK_SECRET, eventually

OD_NUMBER = "whatsapp:+14155238881"


def customer(n: int) -> str:
    return f"whatsapp:+92300{n:07d}"


def message_form(n: int) -> dict[str, str]:
    return inbound_whatsapp_form(from_=customer(n), to=OD_NUMBER, body=f"message {n}")


async def post_whatsapp(
    http: aiohttp.ClientSession, base: str, token: str, form: dict[str, str]
) -> int:
    signature = sign_twilio_request(token, PUBLIC + "/webhooks/whatsapp", form)
    async with http.post(
        base + "/webhooks/whatsapp", data=form, headers={"X-Twilio-Signature": signature}
    ) as response:
        return response.status


async def post_telegram(http: aiohttp.ClientSession, base: str, update: dict) -> int:
    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    async with http.post(base + "/webhooks/telegram", json=update, headers=headers) as response:
        return response.status


def per_recipient(twilio: FakeTwilio) -> Counter[str]:
    return Counter(call.params["To"] for call in twilio.sent_messages())


async def test_kill_9_with_messages_in_the_outbox(database_url: str, tmp_path: Path) -> None:
    """Messages queued while Twilio and Telegram are down survive a SIGKILL; after the
    restart each is delivered exactly once."""
    customers = 20
    async with FakeTelegram() as telegram, FakeTwilio() as twilio, aiohttp.ClientSession() as http:
        twilio.set_outage(503)
        telegram.set_outage(502)
        env = service_env(database_url, telegram, twilio)
        first = await ServeProcess(env, tmp_path, "first").start()
        try:
            statuses = await asyncio.gather(
                *(
                    post_whatsapp(http, first.url, twilio.auth_token, message_form(n))
                    for n in range(customers)
                ),
                *(
                    post_telegram(http, first.url, telegram.message_update(7000 + n, "hi"))
                    for n in range(customers)
                ),
            )
            assert set(statuses) == {200}
            # The acknowledgements were queued and tried against the outage, not delivered.
            await eventually(
                lambda: (
                    len(
                        {
                            c.params["To"]
                            for c in twilio.failed_calls
                            if c.path.endswith("/Messages.json")
                        }
                    )
                    == customers
                ),
                timeout=30,
            )
        finally:
            first.kill()
        assert twilio.sent_messages() == []
        twilio.clear_outage()
        telegram.clear_outage()
        second = await ServeProcess(env, tmp_path, "second").start()
        try:
            await eventually(lambda: len(per_recipient(twilio)) == customers, timeout=90)
            await eventually(
                lambda: len({c.params["chat_id"] for c in telegram.sent_messages()}) == customers,
                timeout=90,
            )
            await asyncio.sleep(2)  # room for a duplicate to show up
        finally:
            second.stop()
        assert set(per_recipient(twilio).values()) == {1}
        tg = Counter(c.params["chat_id"] for c in telegram.sent_messages())
        assert len(tg) == customers and set(tg.values()) == {1}
        assert twilio.violations == [] and telegram.violations == []


async def test_two_serve_processes_on_one_postgres_send_nothing_twice(
    postgres_url: str, tmp_path: Path
) -> None:
    customers = 60
    async with FakeTelegram() as telegram, FakeTwilio() as twilio, aiohttp.ClientSession() as http:
        env = service_env(postgres_url, telegram, twilio)
        processes = [await ServeProcess(env, tmp_path, f"p{i}").start() for i in range(2)]
        try:
            # Each message reaches both processes at once, as a Twilio retry racing the
            # original would: stored once, processed once.
            forms = [message_form(n) for n in range(customers)]
            statuses = await asyncio.gather(
                *(
                    post_whatsapp(http, process.url, twilio.auth_token, form)
                    for form in forms
                    for process in processes
                )
            )
            assert set(statuses) == {200}
            await eventually(lambda: len(per_recipient(twilio)) == customers, timeout=60)
            await asyncio.sleep(2)
        finally:
            for process in processes:
                process.stop()
        counts = per_recipient(twilio)
        assert len(counts) == customers and set(counts.values()) == {1}
        sent_by = [p.log().count("sent on whatsapp") for p in processes]
        assert sum(sent_by) == customers, sent_by
