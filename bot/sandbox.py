"""The sandbox: an admin chats as a made-up WhatsApp or Telegram customer of any tenant,
through the very path real customers take.

What the admin types is stored as an inbound message of the real channel, in the shape its
webhook stores (a Twilio form, a Telegram Update), and the inbox worker, the dispatcher,
the intake dialogue and the outbox handle it exactly as they handle a real one. The only
difference is at the far end: sandbox customers have addresses no real customer can have
(`whatsapp:+999…` — +999 is a country code the ITU keeps unassigned — and Telegram chat
ids from 2**52 up, beyond any Telegram id), and `SandboxRouter`, which stands in front of
each channel's sender, marks messages to those addresses delivered without calling the
provider. The outbox row is the message the page shows. Everything else — the staff card
to the tenant's staff chat, the verification mail, reminders — goes where it would go for
a real customer; while a channel has no credentials, its messages wait in the outbox and
the sandbox page shows them as queued.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from bot.outbox import ReconcilingSender, Sender, SendError
from bot.settings import Settings
from bot.tenants import Tenant
from storage import inbound as inbound_store
from storage.admin_models import SandboxChat
from storage.db import SessionFactory, transaction
from storage.enums import Channel
from storage.models import InboundMessage

log = logging.getLogger(__name__)

WHATSAPP_PREFIX = "whatsapp:+999"
TELEGRAM_FIRST_ID = 2**52
TELEGRAM_SPAN = 2**52  # ids in [2**52, 2**53): exact in JSON numbers everywhere
NOT_CONFIGURED_RETRY = 60.0


class SandboxRefused(ValueError):
    """Why a sandbox chat cannot be opened or used, in words for the page."""


def is_sandbox_address(channel: str, recipient: str) -> bool:
    if channel == Channel.WHATSAPP:
        return recipient.startswith(WHATSAPP_PREFIX)
    if channel == Channel.TELEGRAM:
        return recipient.isdigit() and int(recipient) >= TELEGRAM_FIRST_ID
    return False


def new_address(channel: str) -> str:
    if channel == Channel.WHATSAPP:
        return f"{WHATSAPP_PREFIX}{secrets.randbelow(10**9):09d}"
    return str(TELEGRAM_FIRST_ID + secrets.randbelow(TELEGRAM_SPAN))


def available_channels(settings: Settings) -> tuple[str, ...]:
    """The channels the sandbox offers: those without provider credentials."""
    off = []
    if not settings.whatsapp_enabled:
        off.append(Channel.WHATSAPP.value)
    if not settings.telegram_enabled:
        off.append(Channel.TELEGRAM.value)
    return tuple(off)


@dataclass
class SandboxRouter:
    """Stands in front of one channel's real sender: sandbox customers' messages are
    delivered by being recorded; everyone else's go to the provider, or wait (retried)
    while the channel has no credentials."""

    channel: str
    real: Sender | None = None

    async def send(self, recipient: str, payload: Mapping[str, Any]) -> str | None:
        if is_sandbox_address(self.channel, recipient):
            return f"sandbox-{uuid.uuid4().hex[:20]}"
        if self.real is None:
            raise SendError(
                "channel not configured", retryable=True, retry_after=NOT_CONFIGURED_RETRY
            )
        return await self.real.send(recipient, payload)


@dataclass
class ReconcilingSandboxRouter(SandboxRouter):
    """A sandbox router in front of a sender that can reconcile: after a crash mid-send
    the outbox still asks the provider before sending a real customer's message again."""

    real: ReconcilingSender | None = None

    async def find_sent(
        self, recipient: str, payload: Mapping[str, Any], since: datetime
    ) -> str | None:
        if is_sandbox_address(self.channel, recipient) or self.real is None:
            return None  # a sandbox message "sent" twice is only recorded twice
        return await self.real.find_sent(recipient, payload, since)


def route(senders: Mapping[str, Sender]) -> dict[str, Sender]:
    """The senders with a sandbox router in front of WhatsApp and Telegram; a router keeps
    the protocols of the sender behind it (a `ReconcilingSender` stays one)."""
    routed = dict(senders)
    for channel in (Channel.WHATSAPP, Channel.TELEGRAM):
        real = senders.get(channel)
        if isinstance(real, ReconcilingSender):
            routed[channel] = ReconcilingSandboxRouter(channel, real)
        else:
            routed[channel] = SandboxRouter(channel, real)
    return routed


async def open_chat(
    sessions: SessionFactory,
    *,
    settings: Settings,
    admin_id: int,
    channel: str,
    tenant: Tenant,
    language: str,
    now: datetime,
) -> SandboxChat:
    """A new made-up customer; on Telegram it arrives through the tenant's start link."""
    if channel not in available_channels(settings):
        raise SandboxRefused(
            f"{channel} has provider credentials: talk to the real bot instead of the sandbox"
        )
    if channel == Channel.WHATSAPP and not tenant.channels.whatsapp_numbers:
        raise SandboxRefused(f"{tenant.name} has no WhatsApp number")
    if language not in ("en", "ar", "ur"):
        raise SandboxRefused("language: en, ar or ur")
    for _ in range(5):
        chat = SandboxChat(
            admin_user_id=admin_id,
            channel=channel,
            tenant=tenant.slug,
            address=new_address(channel),
            language=language,
            created_at=now,
        )
        try:
            async with transaction(sessions) as session:
                session.add(chat)
        except IntegrityError:
            continue
        break
    else:  # pragma: no cover - 5 collisions in a space of 10**9
        raise SandboxRefused("could not find a free sandbox address; try again")
    if channel == Channel.TELEGRAM:
        await say(sessions, chat, tenant, text=f"/start {tenant.channels.telegram_start}", now=now)
    log.info("sandbox chat %s opened on %s for %s", chat.id, channel, tenant.slug)
    return chat


async def say(
    sessions: SessionFactory,
    chat: SandboxChat,
    tenant: Tenant,
    *,
    now: datetime,
    text: str | None = None,
    button: str | None = None,
) -> int:
    """Store what the sandbox customer typed (or the button pressed) as the channel's
    webhook would, for the inbox worker to process; the inbound row's id."""
    if chat.channel == Channel.WHATSAPP:
        if button is not None:
            raise SandboxRefused("WhatsApp has no buttons")
        provider_id, kind, payload = _whatsapp_form(chat, tenant, text or "")
        stored_tenant: str | None = tenant.slug
    else:
        provider_id, kind, payload = _telegram_update(chat, now, text, button)
        stored_tenant = None
    async with transaction(sessions) as session:
        row_id = await inbound_store.store(
            session,
            channel=chat.channel,
            provider_id=provider_id,
            kind=kind,
            sender=chat.address,
            tenant=stored_tenant,
            payload=payload,
            now=now,
        )
    assert row_id is not None  # a fresh random provider id is never a repeat
    return row_id


def _whatsapp_form(chat: SandboxChat, tenant: Tenant, text: str) -> tuple[str, str, dict[str, Any]]:
    sid = "SM" + uuid.uuid4().hex
    form = {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": chat.address,
        "To": f"whatsapp:{tenant.channels.whatsapp_numbers[0]}",
        "Body": text,
        "NumMedia": "0",
        "ProfileName": "Sandbox customer",
        "WaId": chat.address.removeprefix("whatsapp:+"),
    }
    return sid, "message", form


def _telegram_update(
    chat: SandboxChat, now: datetime, text: str | None, button: str | None
) -> tuple[str, str, dict[str, Any]]:
    update_id = TELEGRAM_FIRST_ID + secrets.randbelow(TELEGRAM_SPAN)
    user = {
        "id": int(chat.address),
        "is_bot": False,
        "first_name": "Sandbox",
        "last_name": "Customer",
        "language_code": chat.language,
    }
    tg_chat = {"id": int(chat.address), "type": "private", "first_name": "Sandbox"}
    message_id = int(time.time() * 1000) % 2**31
    if button is not None:
        update = {
            "update_id": update_id,
            "callback_query": {
                "id": str(update_id),
                "from": user,
                "chat_instance": str(chat.address),
                "data": button[:64],
                "message": {
                    "message_id": message_id,
                    "date": int(now.timestamp()),
                    "chat": tg_chat,
                    "text": "",
                },
            },
        }
        return str(update_id), "callback", update
    update = {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "date": int(now.timestamp()),
            "chat": tg_chat,
            "from": user,
            "text": text or "",
        },
    }
    return str(update_id), "message", update


async def wait_processed(sessions: SessionFactory, inbound_id: int, *, within: float) -> bool:
    """Wait (briefly) until the inbox worker has processed the message."""
    deadline = time.monotonic() + within
    while True:
        async with sessions() as session:
            row = await session.get(InboundMessage, inbound_id)
            done = row is not None and row.processed_at is not None
        if done or time.monotonic() >= deadline:
            return done
        await asyncio.sleep(0.1)
