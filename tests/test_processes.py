"""Crash and scale-out: `kill -9` with messages in the outbox, and two `serve` processes
sharing one PostgreSQL database. Each customer must get each message exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

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
        # A request the killed process had already written may still wait in a fake's
        # socket: it must meet the outage it was sent into, not the recovery (else it is
        # delivered with no commit: the in-doubt case, which tests/faults/test_faults_kill.py
        # bounds).
        await asyncio.sleep(1)
        assert twilio.sent_messages() == [] and telegram.sent_messages() == []
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


@pytest.mark.timeout(600)
async def test_conversation_survives_kill_9_between_every_step(
    database_url: str, tmp_path: Path
) -> None:
    """A customer files an erasure request while the server is SIGKILLed after every message —
    sometimes before it could even answer. Each answer arrives exactly once, and the request
    is filed once."""
    import re

    from tests.test_intake import _code_in
    from tests.test_mail import smtp_server

    number = customer(4242)
    async with FakeTelegram() as telegram, FakeTwilio() as twilio, aiohttp.ClientSession() as http:
        with smtp_server() as (mailbox, port):
            env = service_env(database_url, telegram, twilio, SMTP_URL=f"smtp://127.0.0.1:{port}")

            def answers() -> list[str]:
                return [c.params["Body"] for c in twilio.sent_messages(to=number)]

            async def say(text: str, *, kill_at_once: bool) -> str:
                server = await ServeProcess(env, tmp_path, "step").start()
                before = len(answers())
                form = inbound_whatsapp_form(from_=number, to=OD_NUMBER, body=text)
                try:
                    assert await post_whatsapp(http, server.url, twilio.auth_token, form) == 200
                    if kill_at_once:
                        server.kill()  # stored and acknowledged, perhaps not yet processed
                        server = await ServeProcess(env, tmp_path, "step").start()
                    await eventually(lambda: len(answers()) > before, timeout=60)
                finally:
                    server.kill()
                return answers()[-1]

            await say("Please delete my data", kill_at_once=True)
            await say("yes", kill_at_once=False)
            await say("sana@example.com", kill_at_once=True)
            # The answer can overtake the code mail, and its server was killed on arrival:
            # the next one sends the mail if that one had not.
            mailer = await ServeProcess(env, tmp_path, "mail").start()
            try:
                await eventually(lambda: mailbox.messages, timeout=60)
            finally:
                mailer.kill()
            filed = await say(_code_in(mailbox, "sana@example.com"), kill_at_once=True)
            assert re.search(r"OD-\d{4}-\d{5}", filed), filed
            # Let a last server run drain anything left, then count.
            final = await ServeProcess(env, tmp_path, "final").start()
            await asyncio.sleep(3)
            final.stop()
    replies = answers()
    assert len(replies) == 4, "\n---\n".join(replies)
    assert len(set(replies)) == 4
    # SMTP has no idempotency key: a kill between the server's "250" and our commit sends
    # the mail again, but as the same message, under the same Message-ID.
    assert len({m.message["Message-ID"] for m in mailbox.messages}) == 1
    bodies = {str(m.message.get_body(preferencelist=("plain",))) for m in mailbox.messages}
    assert len(bodies) == 1
