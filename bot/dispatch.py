"""Routes each stored inbound message to the part of the core that answers it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.i18n import _, guess_language, translate
from bot.messages import Inbound
from bot.tenants import Tenants
from storage import outbox
from storage.enums import Channel
from storage.models import InboundMessage

log = logging.getLogger(__name__)

Parser = Callable[[InboundMessage], Inbound | None]

ACKNOWLEDGEMENT = _(
    "Thank you, we have received your message. The privacy team of {business} will answer you here."
)


@dataclass
class Dispatcher:
    """Status callbacks update the outbox; customer messages get their answer queued."""

    tenants: Tenants
    parsers: Mapping[str, Parser]

    async def __call__(self, session: AsyncSession, message: InboundMessage) -> None:
        if message.kind == "status":
            await self._status(session, message.payload)
            return
        inbound = self.parsers[message.channel](message)
        if inbound is None:
            return
        if inbound.callback_id is not None:
            outbox.enqueue(
                session,
                channel=Channel.TELEGRAM,
                recipient=inbound.sender,
                payload={"method": "answer_callback_query", "callback_id": inbound.callback_id},
                dedupe_key=f"cbq:{inbound.provider_id}",
            )
            return
        if inbound.is_private:
            self._acknowledge(session, inbound, message.payload)

    async def _status(self, session: AsyncSession, form: Mapping[str, Any]) -> None:
        sid, status = str(form.get("MessageSid", "")), str(form.get("MessageStatus", ""))
        known = await outbox.record_status(session, provider_id=sid, status=status)
        if known is None:
            log.info("status %s for a message this desk did not send", status)

    def _acknowledge(
        self, session: AsyncSession, inbound: Inbound, payload: Mapping[str, Any]
    ) -> None:
        """Until the intake conversation answers, confirm receipt so nothing goes unanswered."""
        tenant = self.tenants.by_slug(inbound.tenant) if inbound.tenant else None
        business = tenant.name if tenant else "us"
        default = tenant.languages[0] if tenant else "en"
        language = guess_language(inbound.text, hint=inbound.language_code, default=default)
        extra: dict[str, Any] = {}
        if inbound.channel is Channel.WHATSAPP:
            extra["from"] = payload["To"]
        outbox.enqueue(
            session,
            channel=inbound.channel,
            recipient=inbound.sender,
            tenant=inbound.tenant,
            payload={"text": translate(language, ACKNOWLEDGEMENT, business=business), **extra},
            dedupe_key=f"ack:{inbound.channel}:{inbound.provider_id}",
        )
