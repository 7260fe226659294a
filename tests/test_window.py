"""WhatsApp's 24-hour window: a message Twilio refuses with 63016 is held, an approved template
invites the customer back, and their reply releases the held message before anything else."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import TENANTS_DIR
from tests.fakes.twilio_api import inbound_whatsapp_form, whatsapp_status_form
from tests.service import eventually, running_service

OD_NUMBER = "whatsapp:+14155238881"
CUSTOMER = "whatsapp:+923005556677"
TEMPLATE = "HX" + "a1" * 16


def tenants_with_template(tmp_path: Path) -> Path:
    folder = tmp_path / "tenants"
    folder.mkdir()
    for path in TENANTS_DIR.glob("*.toml"):
        text = path.read_text()
        if path.stem == "optician-dynamics":
            text += f'\n[whatsapp_templates]\nupdate = "{TEMPLATE}"\n'
        (folder / path.name).write_text(text)
    return folder


async def test_refused_message_is_held_and_follows_the_customers_reply(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tenants_dir=tenants_with_template(tmp_path)) as svc:
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi"))
        first = await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER))
        menu = first[0].params["Body"]
        # Twilio later reports that the free-form message fell outside the window.
        refusal = whatsapp_status_form(
            message_sid=first[0].response["sid"],
            status="failed",
            from_=OD_NUMBER,
            to=CUSTOMER,
            error_code=63016,
        )
        assert (await svc.post_whatsapp(refusal, path="/webhooks/whatsapp/status")).status == 200
        await eventually(lambda: len(svc.twilio.sent_messages(to=CUSTOMER)) == 2)
        invite = svc.twilio.sent_messages(to=CUSTOMER)[1].params
        assert invite["ContentSid"] == TEMPLATE and "Body" not in invite
        assert json.loads(invite["ContentVariables"])["1"] == "Optician Dynamics"
        # The customer answers the invitation: the held menu comes first, then the answer.
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="menu"))
        await eventually(lambda: len(svc.twilio.sent_messages(to=CUSTOMER)) == 4)
        bodies = [c.params.get("Body") for c in svc.twilio.sent_messages(to=CUSTOMER)]
        assert bodies[2] == menu
        assert bodies[3] is not None and "reply with a number" in bodies[3].lower()


async def test_other_failures_are_not_held(database_url: str, tmp_path: Path) -> None:
    async with running_service(database_url, tenants_dir=tenants_with_template(tmp_path)) as svc:
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="hi"))
        first = await eventually(lambda: svc.twilio.sent_messages(to=CUSTOMER))
        refusal = whatsapp_status_form(
            message_sid=first[0].response["sid"],
            status="undelivered",
            from_=OD_NUMBER,
            to=CUSTOMER,
            error_code=63024,
        )
        assert (await svc.post_whatsapp(refusal, path="/webhooks/whatsapp/status")).status == 200
        await svc.post_whatsapp(inbound_whatsapp_form(from_=CUSTOMER, to=OD_NUMBER, body="menu"))
        await eventually(lambda: len(svc.twilio.sent_messages(to=CUSTOMER)) == 2)
        assert all("ContentSid" not in c.params for c in svc.twilio.sent_messages(to=CUSTOMER))
