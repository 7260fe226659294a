"""The outbox worker with the real twilio sender against the loopback fake: a message whose
sender died mid-send is not sent again when Twilio already has it."""

from __future__ import annotations

from datetime import timedelta

from bot.outbox import LEASE, OutboxWorker
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


async def test_a_message_twilio_already_has_is_not_sent_again(sessions: SessionFactory) -> None:
    async with FakeTwilio() as twilio:
        settings = Settings(
            _env_file=None,
            twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token,
            twilio_api_base_url=twilio.url,
        )
        sender = WhatsAppSender(settings)
        try:
            first = await _queue(sessions, "Your request is on file.")
            start = utcnow()
            # A worker claims it, Twilio takes it, and the worker dies before recording that.
            async with transaction(sessions) as session:
                await outbox.claim(session, worker="dead", now=start, lease=LEASE, limit=5)
            await sender.send(TO, {"from": FROM, "text": "Your request is on file."})
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
        settings = Settings(
            _env_file=None,
            twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token,
            twilio_api_base_url=twilio.url,
        )
        sender = WhatsAppSender(settings)
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
