"""WhatsApp's 24-hour customer-service window: free text only within 24 hours of the
customer's last message; after that only approved templates (Twilio error 63016).

A free-form message that cannot go now is held: `tell_customer` holds what it would send
outside the window, and a message Twilio refuses with 63016 is held after the fact. The
tenant's approved `update` template invites the customer back, once per wait (the
invitation's dedupe key names the customer's last message), and their next message
releases what was held, in order, before the answer to that message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.i18n import LANGUAGES, _, translate
from bot.tenants import Tenant, Tenants
from storage.crypto import blind_index
from storage.enums import Channel, OutboxStatus
from storage.models import Conversation, OutboundMessage, utcnow

log = logging.getLogger(__name__)

OUTSIDE_WINDOW = "63016"  # Twilio: failed to send freeform message outside the window
HELD = "held"
UPDATE_TEMPLATE = "update"  # [whatsapp_templates] entry used outside the 24-hour window
INVITATION = _("We have a message for you about your privacy request. Reply to read it.")

_T = OutboundMessage.__table__  # type: ignore[attr-defined]


async def hold(
    session: AsyncSession,
    tenant: Tenant | None,
    *,
    recipient: str,
    payload: dict[str, Any],
    ticket_id: int | None,
    key: str | None,
    now: datetime,
    language: str | None = None,
) -> bool:
    """Keep a free-form WhatsApp message until the customer writes again, and invite them
    back with the approved template unless an invitation of this wait is already queued.

    Both happen in the caller's transaction. False when there is no template to invite
    with (the message is held all the same and goes when the customer next writes).
    """
    session.add(
        OutboundMessage(
            channel=Channel.WHATSAPP,
            tenant=tenant.slug if tenant else None,
            recipient=recipient,
            payload=payload,
            status=HELD,
            ticket_id=ticket_id,
            dedupe_key=key,
            created_at=now,
            next_attempt_at=now,
        )
    )
    template = tenant.whatsapp_templates.get(UPDATE_TEMPLATE) if tenant else None
    if tenant is None or template is None:
        return False
    conversation = await _conversation(session, tenant, recipient)
    since = conversation.last_inbound_at if conversation else None
    if language is None and conversation is not None:
        language = conversation.language
    if language not in LANGUAGES or language not in tenant.languages:
        language = tenant.default_language
    variables = {"1": tenant.name, "2": translate(language, INVITATION)}
    invitation = {
        "channel": Channel.WHATSAPP,
        "tenant": tenant.slug,
        "recipient": recipient,
        "recipient_index": blind_index(recipient),
        "payload": {
            "from": payload["from"],
            "content_sid": template,
            "content_variables": json.dumps(variables, ensure_ascii=False),
        },
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": utcnow(),
        "dedupe_key": _invitation_key(tenant, recipient, since),
        "ticket_id": ticket_id,
        "created_at": now,
    }
    # A second message held in the same wait (or a replay) finds the invitation queued.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(_T).values(invitation).on_conflict_do_nothing(index_elements=["dedupe_key"])
    connection = await session.connection()
    await connection.execute(statement)
    return True


def _invitation_key(tenant: Tenant, recipient: str, since: datetime | None) -> str:
    """One invitation per wait: the customer's last message starts it, their next ends it."""
    who = blind_index(recipient)  # the key is stored: no address in clear
    return f"invite:{tenant.slug}:{who}:{since.isoformat() if since else 'never'}"


async def _conversation(
    session: AsyncSession, tenant: Tenant, recipient: str
) -> Conversation | None:
    found = await session.exec(
        select(Conversation).where(
            Conversation.channel == Channel.WHATSAPP,
            Conversation.address_index == blind_index(recipient),
            Conversation.tenant == tenant.slug,
        )
    )
    return found.first()


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
    tenant = (
        tenants.by_slug(refused.tenant) if refused.tenant and refused.tenant in tenants else None
    )
    invited = await hold(
        session,
        tenant,
        recipient=refused.recipient,
        payload=refused.payload,
        ticket_id=refused.ticket_id,
        key=f"held:{refused.id}",
        now=now,
    )
    if invited:
        log.info("outbox message %s held outside the window; invitation queued", refused.id)
    else:
        log.warning("outbox message %s held: no approved template to invite with", refused.id)
    return True


async def release_held(session: AsyncSession, *, recipient: str, tenant: str, now: datetime) -> int:
    """The customer wrote to `tenant`: its window is open again, so send what it held, oldest
    first. What another business holds for the same number waits for a message to that
    business (its window is its own)."""
    result = await session.exec(
        sa.update(_T)
        .where(
            _T.c.channel == Channel.WHATSAPP,
            _T.c.recipient_index == blind_index(recipient),
            _T.c.tenant == tenant,
            _T.c.status == HELD,
        )
        .values(status=OutboxStatus.PENDING, next_attempt_at=now)
    )
    return int(result.rowcount)


async def held_count(session: AsyncSession, recipient: str) -> int:
    result = await session.exec(
        select(sa.func.count()).where(
            col(OutboundMessage.recipient_index) == blind_index(recipient),
            col(OutboundMessage.status) == HELD,
        )
    )
    return int(result.one())
