"""Per-sender message rate limit: someone (or something) writing faster than a person can
is answered politely, once a minute, and their flood does not reach the dialogue.

A person types a few messages a minute; `PER_MINUTE` leaves room for pasting a long text
in pieces. The count is of the messages stored from this sender in the minute before this
one arrived, so processing the same message again gives the same answer.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.i18n import LANGUAGES, _, guess_language, translate
from bot.logs import mask_address
from bot.messages import Inbound
from storage import outbox
from storage.crypto import blind_index
from storage.enums import Channel
from storage.models import InboundMessage, OutboundMessage

log = logging.getLogger(__name__)

PER_MINUTE = 20
WINDOW = timedelta(minutes=1)

SLOW_DOWN = _(
    "You are sending messages faster than we can read them. Please wait a minute, then send "
    "your last message again."
)


async def too_fast(session: AsyncSession, message: InboundMessage) -> bool:
    """More than `PER_MINUTE` messages from this sender in the minute up to this one."""
    count = await session.exec(
        select(sa.func.count())
        .select_from(InboundMessage)
        .where(
            InboundMessage.channel == message.channel,
            InboundMessage.sender_index == message.sender_index,
            InboundMessage.kind == message.kind,
            col(InboundMessage.received_at) > message.received_at - WINDOW,
            col(InboundMessage.id) <= message.id,
        )
    )
    return count.one() > PER_MINUTE


async def slow_down(session: AsyncSession, inbound: Inbound) -> None:
    """The polite answer, at most once per sender and minute (the dedupe key's minute)."""
    minute = int(inbound.received_at.timestamp() // 60)
    who = blind_index(inbound.sender)  # the key is stored: no address in clear
    key = f"slow-down:{inbound.channel}:{who}:{minute}"
    said = await session.exec(select(OutboundMessage.id).where(OutboundMessage.dedupe_key == key))
    if said.first() is not None:
        return
    hint = (inbound.language_code or "")[:2]
    language = guess_language(inbound.text, hint=hint if hint in LANGUAGES else None)
    payload: dict[str, str] = {"text": translate(language, SLOW_DOWN)}
    if inbound.channel == Channel.WHATSAPP and inbound.to:
        payload["from"] = inbound.to
    outbox.enqueue(
        session,
        channel=inbound.channel,
        recipient=inbound.sender,
        tenant=inbound.tenant,
        payload=payload,
        dedupe_key=key,
    )
    log.info("sender %s over %s messages a minute", mask_address(inbound.sender), PER_MINUTE)
