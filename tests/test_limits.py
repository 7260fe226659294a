"""A sender writing faster than a person can gets one polite answer a minute, and the flood
does not reach the dialogue; other customers are not slowed down."""

from __future__ import annotations

import asyncio

from bot.i18n import translate
from bot.limits import PER_MINUTE, SLOW_DOWN
from tests.fakes.twilio_api import inbound_whatsapp_form
from tests.service import eventually, running_service

OD_NUMBER = "whatsapp:+14155238881"
FLOODER = "whatsapp:+923001110000"
CALM = "whatsapp:+923002220000"


async def test_a_flood_gets_one_polite_answer_and_others_carry_on(database_url: str) -> None:
    async with running_service(database_url) as svc:
        forms = [
            inbound_whatsapp_form(from_=FLOODER, to=OD_NUMBER, body=f"hi {n}")
            for n in range(PER_MINUTE + 10)
        ]
        statuses = await asyncio.gather(*(svc.post_whatsapp(form) for form in forms))
        assert {s.status for s in statuses} == {200}  # every message is stored
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CALM, to=OD_NUMBER, body="hi"))
        polite = translate("en", SLOW_DOWN)
        await eventually(lambda: svc.twilio.sent_messages(to=CALM))
        await eventually(
            lambda: any(
                m.params.get("Body") == polite for m in svc.twilio.sent_messages(to=FLOODER)
            )
        )
        await asyncio.sleep(1.0)  # would anything more go out?
        bodies = [m.params.get("Body") for m in svc.twilio.sent_messages(to=FLOODER)]
        assert bodies.count(polite) == 1
        # The first PER_MINUTE messages had their answers; the rest only the polite one.
        assert len(bodies) == PER_MINUTE + 1, bodies
        calm = [m.params.get("Body") for m in svc.twilio.sent_messages(to=CALM)]
        assert calm and polite not in calm
        assert svc.twilio.violations == []


async def test_the_polite_answer_speaks_the_senders_language(database_url: str) -> None:
    async with running_service(database_url) as svc:
        forms = [
            inbound_whatsapp_form(from_=FLOODER, to=OD_NUMBER, body=f"مرحبا {n}")
            for n in range(PER_MINUTE + 2)
        ]
        for form in forms:
            assert (await svc.post_whatsapp(form)).status == 200
        polite = translate("ar", SLOW_DOWN)
        assert polite != SLOW_DOWN
        await eventually(
            lambda: any(
                m.params.get("Body") == polite for m in svc.twilio.sent_messages(to=FLOODER)
            )
        )
