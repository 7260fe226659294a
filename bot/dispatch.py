"""Routes each stored inbound message to the part of the core that answers it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from bot import limits, window
from bot.desk import Desk
from bot.inbox import RetryLater
from bot.intake import Intake
from bot.messages import Inbound
from storage import outbox
from storage.enums import Channel
from storage.models import InboundMessage, utcnow

log = logging.getLogger(__name__)

Parser = Callable[[InboundMessage], Inbound | None]
STATUS_TRIES = 5  # then a status for a message we never recorded is let go


class UnknownMessageYet(RetryLater):
    """A status callback for a sid not yet recorded: the inbox retries it shortly."""


@dataclass
class Dispatcher:
    """Status callbacks update the outbox; staff chats, commands and buttons go to the staff
    desk; customers' messages go to the intake dialogue."""

    intake: Intake
    parsers: Mapping[str, Parser]
    now: Callable[[], datetime] = utcnow
    desk: Desk | None = None

    async def __call__(self, session: AsyncSession, message: InboundMessage) -> None:
        if message.kind == "status":
            await self._status(session, message.payload, attempts=message.attempts)
            return
        inbound = self.parsers[message.channel](message)
        if inbound is None:
            return
        if self.desk is not None and await self.desk.wants(session, inbound):
            await self.desk.handle(session, inbound, self.now())  # answers its own buttons
            return
        if inbound.callback_id is not None:
            outbox.enqueue(
                session,
                channel=Channel.TELEGRAM,
                recipient=inbound.sender,
                payload={"method": "answer_callback_query", "callback_id": inbound.callback_id},
                dedupe_key=f"cbq:{inbound.provider_id}",
            )
        if not inbound.is_private:
            log.info("inbound %s from a %s chat: no staff desk", message.id, inbound.chat_type)
            return
        if await limits.too_fast(session, message):
            await limits.slow_down(session, inbound)
            return
        await self.intake.handle(session, inbound, self.now())

    async def _status(
        self, session: AsyncSession, form: Mapping[str, Any], *, attempts: int
    ) -> None:
        sid, status = str(form.get("MessageSid", "")), str(form.get("MessageStatus", ""))
        known = await outbox.record_status(session, provider_id=sid, status=status)
        if known is None and attempts < STATUS_TRIES:
            # Twilio can call back before our worker has recorded the message's sid.
            raise UnknownMessageYet(sid)
        await window.hold_after_refusal(session, self.intake.tenants, form, self.now())
        if known is None:
            log.info("status %s for a message this desk did not send", status)
