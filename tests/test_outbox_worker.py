"""The outbox worker with the real twilio sender against the loopback fake: a message whose
sender died mid-send is not sent again when Twilio already has it."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from bot.outbox import LEASE, OutboxWorker, SendError
from bot.priority import Foreground
from bot.settings import Settings
from handlers.whatsapp import WhatsAppSender
from storage import outbox
from storage.db import SessionFactory, transaction
from storage.models import OutboundMessage, utcnow
from tests.fakes.twilio_api import FakeTwilio

FROM = "whatsapp:+14155238881"
TO = "whatsapp:+923001230000"


async def _queue(sessions: SessionFactory, text: str) -> int:
    async with transaction(sessions) as session:
        row = outbox.enqueue(
            session, channel="whatsapp", recipient=TO, payload={"from": FROM, "text": text}
        )
        await session.flush()
        assert row.id is not None
        return row.id


async def _sent_then_died(
    sessions: SessionFactory, sender: WhatsAppSender, text: str
) -> tuple[int, datetime]:
    """A worker claims a message, Twilio takes it, and the worker dies before recording
    that: the message's id, and when it was claimed."""
    queued = await _queue(sessions, text)
    start = utcnow()
    async with transaction(sessions) as session:
        await outbox.claim(session, worker="dead", now=start, lease=LEASE, limit=5)
    await sender.send(TO, {"from": FROM, "text": text})
    return queued, start


def _settings(twilio: FakeTwilio) -> Settings:
    return Settings(
        _env_file=None,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_api_base_url=twilio.url,
    )


async def test_a_message_twilio_already_has_is_not_sent_again(sessions: SessionFactory) -> None:
    async with FakeTwilio() as twilio:
        sender = WhatsAppSender(_settings(twilio))
        try:
            first, start = await _sent_then_died(sessions, sender, "Your request is on file.")
            second = await _queue(sessions, "Next message")
            later = start + LEASE + timedelta(seconds=1)
            worker = OutboxWorker(sessions, {"whatsapp": sender}, now=lambda: later)
            assert await worker.run_once() == 1
            assert await worker.run_once() == 1
            bodies = [c.params["Body"] for c in twilio.sent_messages(to=TO)]
            assert bodies == ["Your request is on file.", "Next message"]
            async with sessions() as session:
                row = await session.get(OutboundMessage, first)
                assert row is not None and row.status == "sent"
                assert row.provider_id == twilio.sent_messages(to=TO)[0].response["sid"]
                assert (await session.get(OutboundMessage, second)).status == "sent"
        finally:
            await sender.close()


async def test_an_interrupted_message_twilio_lacks_is_sent(sessions: SessionFactory) -> None:
    async with FakeTwilio() as twilio:
        sender = WhatsAppSender(_settings(twilio))
        try:
            await _queue(sessions, "Lost in flight")
            start = utcnow()
            async with transaction(sessions) as session:
                await outbox.claim(session, worker="dead", now=start, lease=LEASE, limit=5)
            later = start + LEASE + timedelta(seconds=1)
            worker = OutboxWorker(sessions, {"whatsapp": sender}, now=lambda: later)
            assert await worker.run_once() == 1
            assert [c.params["Body"] for c in twilio.sent_messages(to=TO)] == ["Lost in flight"]
        finally:
            await sender.close()


class _LookupFailsOnce(WhatsAppSender):
    """The real sender, whose first look at Twilio's list of messages fails."""

    failed = False

    async def find_sent(self, recipient: str, payload: Any, since: datetime) -> str | None:
        if not self.failed:
            self.failed = True
            raise SendError("twilio lookup: TimeoutError", retryable=True)
        return await super().find_sent(recipient, payload, since)


async def test_a_message_stays_in_doubt_when_asking_twilio_fails(
    sessions: SessionFactory,
) -> None:
    """The attempt after a crash cannot reach Twilio's list: its retry must still ask, not
    send a message Twilio may already have."""
    async with FakeTwilio() as twilio:
        sender = _LookupFailsOnce(_settings(twilio))
        try:
            first, start = await _sent_then_died(sessions, sender, "Your code is on its way.")
            clock = [start + LEASE + timedelta(seconds=1)]
            worker = OutboxWorker(sessions, {"whatsapp": sender}, now=lambda: clock[0])
            assert await worker.run_once() == 1  # the lookup fails: retried later
            assert sender.failed
            clock[0] += timedelta(hours=1)
            assert await worker.run_once() == 1
            assert len(twilio.sent_messages(to=TO)) == 1
            async with sessions() as session:
                row = await session.get(OutboundMessage, first)
                assert row is not None and row.status == "sent"
        finally:
            await sender.close()


class _PageArrivesMidSend(WhatsAppSender):
    """The real sender; an admin page starts being answered while Twilio takes the message."""

    def __init__(self, settings: Settings, foreground: Foreground) -> None:
        super().__init__(settings)
        self.page = foreground.request()

    async def send(self, recipient: str, payload: Any) -> str | None:
        provider_id = await super().send(recipient, payload)
        self.page.__enter__()
        return provider_id


async def _status(sessions: SessionFactory, message_id: int) -> str:
    async with sessions() as session:
        row = await session.get(OutboundMessage, message_id)
        assert row is not None
        return row.status


async def test_requests_in_flight_go_before_a_send_and_before_its_record(
    sessions: SessionFactory,
) -> None:
    """The worker starts no send while a request is in flight, and records a send only once
    the request that arrived meanwhile is answered (`bot.priority`)."""
    foreground = Foreground(max_pause=10.0)
    async with FakeTwilio() as twilio:
        sender = _PageArrivesMidSend(_settings(twilio), foreground)
        worker = OutboxWorker(sessions, {"whatsapp": sender}, pause=foreground.pause)
        try:
            queued = await _queue(sessions, "Your request is on file.")
            with foreground.request():  # a webhook, before the worker looks
                delivery = asyncio.create_task(worker.run_once())
                await asyncio.sleep(0.3)
                assert twilio.sent_messages(to=TO) == []
            for _ in range(100):  # the send goes out once the webhook is answered
                if twilio.sent_messages(to=TO):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            assert len(twilio.sent_messages(to=TO)) == 1
            assert await _status(sessions, queued) != "sent"  # the page is still in flight
            sender.page.__exit__(None, None, None)
            assert await asyncio.wait_for(delivery, 5) == 1
            assert await _status(sessions, queued) == "sent"
        finally:
            await sender.close()
