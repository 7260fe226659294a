"""WhatsApp's 24-hour customer-service window: free text only within 24 hours of the
customer's last message; after that only approved templates (Twilio error 63016).

When Twilio reports 63016 for a message, the message is held and the tenant's approved
`update` template invites the customer back; their next message releases what was held,
in order, before the answer to that message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.i18n import _, translate
from bot.tenants import Tenants
from storage import outbox
from storage.enums import Channel
from storage.models import OutboundMessage

log = logging.getLogger(__name__)

OUTSIDE_WINDOW = "63016"  # Twilio: failed to send freeform message outside the window
HELD = "held"
UPDATE_TEMPLATE = "update"
INVITATION = _("We have a message for you about your privacy request. Reply to read it.")


async def hold_after_refusal(
    session: AsyncSession, tenants: Tenants, form: Mapping[str, Any], now: datetime
) -> bool:
    """Hold a message Twilio refused for the window and queue the template invitation."""
    if str(form.get("ErrorCode", "")) != OUTSIDE_WINDOW:
        return False
    found = await session.exec(
        select(OutboundMessage).where(
            OutboundMessage.provider_id == str(form.get("MessageSid", "")),
            OutboundMessage.channel == Channel.WHATSAPP,
        )
    )
    refused = found.first()
    if refused is None or refused.payload.get("content_sid"):
        return False  # not ours, or a template already (nothing freer to fall back to)
    session.add(
        OutboundMessage(
            channel=refused.channel,
            tenant=refused.tenant,
            recipient=refused.recipient,
            payload=refused.payload,
            status=HELD,
            ticket_id=refused.ticket_id,
            dedupe_key=f"held:{refused.id}",
            created_at=now,
            next_attempt_at=now,
        )
    )
    tenant = (
        tenants.by_slug(refused.tenant) if refused.tenant and refused.tenant in tenants else None
    )
    template = tenant.whatsapp_templates.get(UPDATE_TEMPLATE) if tenant else None
    if tenant is None or template is None:
        log.warning("outbox message %s held: no approved template to invite with", refused.id)
        return True
    text = translate(tenant.default_language, INVITATION)
    outbox.enqueue(
        session,
        channel=Channel.WHATSAPP,
        recipient=refused.recipient,
        tenant=tenant.slug,
        ticket_id=refused.ticket_id,
        payload={
            "from": refused.payload["from"],
            "content_sid": template,
            "content_variables": json.dumps({"1": tenant.name, "2": text}, ensure_ascii=False),
        },
        dedupe_key=f"invite:{refused.id}",
    )
    log.info("outbox message %s held outside the window; template invitation queued", refused.id)
    return True


async def release_held(session: AsyncSession, *, recipient: str, now: datetime) -> int:
    """The customer wrote: the window is open again, so send what was held, oldest first."""
    table = OutboundMessage.__table__  # type: ignore[attr-defined]
    result = await session.exec(
        sa.update(table)
        .where(
            table.c.channel == Channel.WHATSAPP,
            table.c.recipient == recipient,
            table.c.status == HELD,
        )
        .values(status="pending", next_attempt_at=now)
    )
    return int(result.rowcount)


async def held_count(session: AsyncSession, recipient: str) -> int:
    result = await session.exec(
        select(sa.func.count()).where(
            col(OutboundMessage.recipient) == recipient, col(OutboundMessage.status) == HELD
        )
    )
    return int(result.one())
