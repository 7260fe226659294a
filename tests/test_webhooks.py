"""The inbound edges over real HTTP: signatures, secrets, duplicates, bad bodies; and the
acknowledgement travelling back out through the real twilio and python-telegram-bot clients."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.twilio_api import inbound_whatsapp_form, whatsapp_status_form
from tests.service import PUBLIC, WEBHOOK_SECRET, eventually, running_service

OD_NUMBER = "whatsapp:+14155238881"  # optician-dynamics' sender in config/tenants
CUSTOMER = "whatsapp:+923001234567"


async def test_health_readiness_and_metrics(database_url: str) -> None:
    async with running_service(database_url) as svc:
        assert (await svc.http.get(svc.url + "/healthz")).status == 200
        ready = await svc.http.get(svc.url + "/readyz")
        assert ready.status == 200 and (await ready.json())["database"] == "ok"
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi"))
        text = await (await svc.http.get(svc.url + "/metrics")).text()
        assert 'rightsdesk_inbound_messages_total{channel="whatsapp",result="accepted"} 1.0' in text
        assert "rightsdesk_webhook_seconds_bucket" in text
        assert "rightsdesk_outbox_depth" in text


async def test_whatsapp_message_is_stored_once_and_acknowledged(database_url: str) -> None:
    async with running_service(database_url) as svc:
        form = inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hello")
        first = await svc.post_whatsapp(form)
        assert first.status == 200
        assert first.content_type == "text/xml"
        assert "<Response/>" in await first.text()
        sent = await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER))
        assert sent[0].params["From"] == OD_NUMBER
        assert "privacy desk of Optician Dynamics" in sent[0].params["Body"]
        assert sent[0].params["StatusCallback"] == PUBLIC + "/webhooks/whatsapp/status"
        # Twilio retries the same MessageSid: acknowledged, not processed again.
        again = await svc.post_whatsapp(form)
        assert again.status == 200
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="2"))
        await eventually(lambda: len(svc.twilio.sent_messages(to=CUSTOMER)) == 2)
        assert len(svc.twilio.sent_messages(to=CUSTOMER)) == 2
        assert svc.twilio.violations == []


async def test_whatsapp_reply_follows_the_customers_language(database_url: str) -> None:
    async with running_service(database_url) as svc:
        await svc.post_whatsapp(
            inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="میرا ڈیٹا")
        )
        sent = await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER))
        assert "پرائیویسی ڈیسک" in sent[0].params["Body"]  # the menu, in Urdu


@pytest.mark.parametrize(
    "signature",
    ["", "forged-signature", "bm90IHRoZSByaWdodCBzaWduYXR1cmU="],
    ids=["missing", "garbage", "wrong"],
)
async def test_whatsapp_rejects_unsigned_and_forged_requests(
    database_url: str, signature: str
) -> None:
    async with running_service(database_url) as svc:
        response = await svc.post_whatsapp(
            inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi"), signature=signature
        )
        assert response.status == 403
        assert svc.twilio.sent_messages() == []


async def test_whatsapp_signature_is_bound_to_public_url_and_body(database_url: str) -> None:
    from tests.fakes.twilio_api import sign_twilio_request

    async with running_service(database_url) as svc:
        form = inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi")
        # Signed for another host, or signed with another token: both refused.
        other_host = sign_twilio_request(
            svc.twilio.auth_token, "https://evil.test/webhooks/whatsapp", form
        )
        assert (await svc.post_whatsapp(form, signature=other_host)).status == 403
        other_token = sign_twilio_request("0" * 32, PUBLIC + "/webhooks/whatsapp", form)
        assert (await svc.post_whatsapp(form, signature=other_token)).status == 403
        # A body changed after signing is refused.
        good = sign_twilio_request(svc.twilio.auth_token, PUBLIC + "/webhooks/whatsapp", form)
        tampered = dict(form, Body="something else")
        assert (await svc.post_whatsapp(tampered, signature=good)).status == 403


async def test_whatsapp_malformed_bodies_get_4xx(database_url: str) -> None:
    async with running_service(database_url) as svc:
        no_sid = inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi")
        del no_sid["MessageSid"]
        assert (await svc.post_whatsapp(no_sid)).status == 400
        bad_media = inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER) | {"NumMedia": "x"}
        assert (await svc.post_whatsapp(bad_media)).status == 400
        unknown_to = inbound_whatsapp_form(from_=CUSTOMER, to="whatsapp:+15550000000")
        response = await svc.post_whatsapp(unknown_to)
        assert response.status == 422
        assert "tenant" in (await response.json())["error"]
        as_json = await svc.http.post(
            svc.url + "/webhooks/whatsapp",
            json={"MessageSid": "x"},
            headers={"X-Twilio-Signature": "x"},
        )
        assert as_json.status == 400
        assert svc.twilio.sent_messages() == []


async def test_bodies_over_the_size_limit_get_413_and_nothing_is_stored(
    database_url: str,
) -> None:
    """A correctly signed Twilio form and an Update with the right secret, each just over
    MAX_BODY: 413 with a reason, nothing stored, nothing answered; the next normal message
    of each is stored as usual."""
    from sqlmodel import select

    from bot.app import MAX_BODY
    from storage.db import create_engine, session_factory
    from storage.models import InboundMessage

    async def stored() -> list[InboundMessage]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                return list(await session.exec(select(InboundMessage)))
        finally:
            await engine.dispose()

    async with running_service(database_url) as svc:
        huge = "x" * MAX_BODY
        form = inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body=huge)
        for path in ("/webhooks/whatsapp", "/webhooks/whatsapp/status"):
            response = await svc.post_whatsapp(form, path=path)
            assert response.status == 413, path
            assert "body size" in await response.text(), path
        update = svc.telegram.message_update(5550004, huge)
        response = await svc.post_telegram(update)
        assert response.status == 413
        assert "body size" in await response.text()
        assert await stored() == []
        # Nothing was dropped for another reason: the same senders, normal size, get in.
        small = inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi")
        assert (await svc.post_whatsapp(small)).status == 200
        hello = svc.telegram.message_update(5550004, "hi")
        assert (await svc.post_telegram(hello)).status == 200
        await eventually(lambda: svc.telegram.sent_messages(chat_id=5550004))
        await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER))
        assert sorted(r.provider_id for r in await stored()) == sorted(
            [small["MessageSid"], str(hello["update_id"])]
        )
        assert len(svc.twilio.sent_messages(to=CUSTOMER)) == 1
        assert len(svc.telegram.sent_messages(chat_id=5550004)) == 1


async def test_whatsapp_status_callback_updates_the_outbox(database_url: str) -> None:
    from sqlmodel import select

    from storage.db import create_engine, session_factory
    from storage.models import OutboundMessage

    async with running_service(database_url) as svc:
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi"))
        sent = await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER))
        sid = sent[0].response["sid"]
        status = whatsapp_status_form(
            message_sid=sid, status="delivered", from_=OD_NUMBER, to=CUSTOMER
        )
        assert (await svc.post_whatsapp(status, path="/webhooks/whatsapp/status")).status == 200
        forged = await svc.post_whatsapp(status, path="/webhooks/whatsapp/status", signature="x")
        assert forged.status == 403
        engine = create_engine(database_url)
        try:

            async def provider_status() -> str | None:
                async with session_factory(engine)() as session:
                    row = (await session.exec(select(OutboundMessage))).one()
                    return row.provider_status

            for _ in range(200):
                if await provider_status() == "delivered":
                    break
                await asyncio.sleep(0.05)
            assert await provider_status() == "delivered"
        finally:
            await engine.dispose()


async def test_telegram_webhook_is_registered_with_its_secret(database_url: str) -> None:
    async with running_service(database_url) as svc:
        calls = await eventually(lambda: svc.telegram.calls_to("setWebhook"))
        assert calls[0].params["url"] == PUBLIC + "/webhooks/telegram"
        assert calls[0].params["secret_token"] == WEBHOOK_SECRET
        assert svc.telegram.violations == []


async def test_telegram_update_is_stored_once_and_answered(database_url: str) -> None:
    async with running_service(database_url) as svc:
        update = svc.telegram.message_update(5550001, "hello", language_code="ar")
        assert (await svc.post_telegram(update)).status == 200
        sent = await eventually(lambda: svc.telegram.sent_messages(chat_id=5550001))
        # Three businesses share the bot and none was named: the customer picks one.
        assert "Which business" in sent[0].params["text"]  # Latin text wins over language_code
        buttons = [
            row[0]["callback_data"] for row in sent[0].params["reply_markup"]["inline_keyboard"]
        ]
        assert sorted(buttons) == [
            "tenant:jooptics",
            "tenant:optician-dynamics",
            "tenant:optimizory",
        ]
        assert (await svc.post_telegram(update)).status == 200  # a repeat: not answered again
        start = svc.telegram.message_update(5550001, "/start jooptics")
        assert (await svc.post_telegram(start)).status == 200
        await eventually(lambda: len(svc.telegram.sent_messages(chat_id=5550001)) == 2)
        texts = [c.params["text"] for c in svc.telegram.sent_messages(chat_id=5550001)]
        assert len(texts) == 2 and "privacy desk of Jooptics" in texts[1]
        assert svc.telegram.violations == []


@pytest.mark.parametrize("secret", [None, "", "wrong-secret"], ids=["missing", "empty", "wrong"])
async def test_telegram_rejects_a_wrong_secret(database_url: str, secret: str | None) -> None:
    async with running_service(database_url) as svc:
        update = svc.telegram.message_update(5550002, "hello")
        assert (await svc.post_telegram(update, secret=secret)).status == 403
        assert svc.telegram.sent_messages(chat_id=5550002) == []


async def test_telegram_malformed_bodies_get_400(database_url: str) -> None:
    async with running_service(database_url) as svc:
        headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
        for body in (
            b"not json",
            b"[1,2]",
            b'{"update_id": "seven"}',
            b'{"update_id": -1}',
            b'{"update_id": 5, "message": {"text": "no chat"}}',
            b"\xff\xfe",
            # dates past what the platform's clock can hold (found by the fuzzer: was a 500)
            b'{"update_id": 6, "message": {"message_id": 1, "date": 1000000000000000000,'
            b' "chat": {"id": 1, "type": "private"}, "text": "hi"}}',
            b'{"update_id": 7, "message": {"message_id": 1, "date": 1e20,'
            b' "chat": {"id": 1, "type": "private"}, "text": "hi"}}',
        ):
            response = await svc.http.post(
                svc.url + "/webhooks/telegram", data=body, headers=headers
            )
            assert response.status == 400, body


async def test_telegram_long_polling_without_public_url(database_url: str) -> None:
    async with running_service(database_url, public_base_url=None) as svc:
        await eventually(lambda: svc.telegram.calls_to("deleteWebhook"))
        svc.telegram.push_message(5550003, "hello from polling")
        sent = await eventually(lambda: svc.telegram.sent_messages(chat_id=5550003))
        assert len(sent) == 1
        # The webhook is closed in polling mode: no secret can match.
        update = svc.telegram.message_update(5550003, "x")
        assert (await svc.post_telegram(update, secret="anything")).status == 403


async def test_outbox_retries_provider_errors_and_delivers_once(database_url: str) -> None:
    async with running_service(database_url) as svc:
        svc.twilio.fail_next(2, status=500)
        svc.telegram.fail_next(1, status=429, retry_after=1)
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi"))
        await svc.post_telegram(svc.telegram.message_update(5550004, "hi"))
        await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER), timeout=30)
        await eventually(lambda: svc.telegram.sent_messages(chat_id=5550004), timeout=30)
        assert len(svc.twilio.sent_messages(to=CUSTOMER)) == 1
        assert len(svc.telegram.sent_messages(chat_id=5550004)) == 1
        assert len(svc.twilio.failed_calls) == 2
