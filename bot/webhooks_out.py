"""Outbound webhooks: every ticket event of a tenant with a `webhook_url`, POSTed there as
JSON signed with HMAC-SHA256, through the durable outbox.

The relay reads the ticket-event log, whoever wrote it (the intake, the staff desk, the
clock, the admin pages, in any process), and queues one outbox row per event on channel
`webhook` with the dedupe key `webhook:<event id>`: a second relay, a restart or a replay
can never queue an event twice. Its high-water mark lives in `webhook_relay`; each pass
also looks back `LOOKBACK` events behind it, so an event whose transaction committed after
a later one's is still found. The outbox then delivers the rows of one tenant in order,
retrying network errors, timeouts, 408, 425, 429 and 5xx with backoff (other 4xx fail the
row with the status as its reason), exactly like customer messages.

A delivery is `POST <webhook_url>` with `Content-Type: application/json` and
`X-Rightsdesk-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed with
the tenant's webhook secret (derived from SECRET_KEY; admins see it on /admin/webhooks).
Receivers should recompute it over the raw body, compare in constant time, and refuse
timestamps older than five minutes; `X-Rightsdesk-Event` carries the event id, stable
across retries, for deduplication.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from bot.api_models import event_out, ticket_out
from bot.outbox import SendError
from bot.polling import Poller
from bot.sealed import derive_key
from bot.tenants import Tenants
from storage import admin_queries as q
from storage import outbox
from storage.db import SessionFactory, transaction
from storage.models import utcnow

log = logging.getLogger(__name__)

CHANNEL = "webhook"
LOOKBACK = 1000  # events re-checked behind the high-water mark (late commits)
BATCH = 500
TIMEOUT = aiohttp.ClientTimeout(total=15)
RETRYABLE = frozenset({408, 425, 429})
SIGNATURE_HEADER = "X-Rightsdesk-Signature"


def webhook_secret(secret: bytes, tenant: str) -> str:
    """The tenant's signing key, derived from SECRET_KEY (hex, as receivers type it)."""
    return derive_key(secret, f"rightsdesk webhook v1:{tenant}").hex()


def sign(key: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(key: str, body: bytes, header: str, *, now: float, tolerance: float = 300) -> bool:
    """What a receiver does (and what the tests do): check the signature and its age."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(key, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def body_of(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class WebhookRelay:
    """Queues the webhook of every new ticket event of the tenants that want them."""

    sessions: SessionFactory
    tenants: Tenants
    now: Callable[[], datetime] = utcnow
    every: float = 1.0
    after_commit: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.poller = Poller("webhook relay", self._pass, self.every)

    async def _pass(self) -> int:
        return 1 if await self.run_once() >= BATCH else 0  # a full batch: more may wait

    @property
    def wanted(self) -> list[str]:
        return [t.slug for t in self.tenants if t.webhook_url is not None]

    async def run_once(self) -> int:
        """Queue what is new; how many webhooks were queued."""
        tenants = self.wanted
        if not tenants:
            return 0
        now = self.now()
        queued = 0
        async with transaction(self.sessions) as session:
            position, floor = await q.relay_position(session, now=now)
            found = await q.events_after(
                session,
                after_id=max(floor, position - LOOKBACK),
                tenants=tenants,
                limit=LOOKBACK + BATCH,  # the look-back window holds at most LOOKBACK events
            )
            keys = [f"webhook:{event.id}" for event, _ in found]
            done = await q.existing_dedupe_keys(session, keys)
            for (event, ticket), key in zip(found, keys, strict=True):
                if key in done:
                    continue
                outbox.enqueue(
                    session,
                    channel=CHANNEL,
                    recipient=ticket.tenant,
                    tenant=ticket.tenant,
                    ticket_id=ticket.id,
                    dedupe_key=key,
                    payload={
                        "id": f"evt_{event.id}",
                        "type": f"ticket.{event.kind}",
                        "tenant": ticket.tenant,
                        "ticket": ticket_out(ticket, self.tenants, now=now).model_dump(mode="json"),
                        "event": event_out(event, self.tenants, ticket.tenant).model_dump(
                            mode="json"
                        ),
                    },
                )
                queued += 1
            if found:
                last = found[-1][0].id
                assert last is not None
                await q.move_relay(session, to=last, now=now)
        if queued:
            log.info("queued %s webhook(s)", queued)
            if self.after_commit is not None:
                self.after_commit()
        return queued

    async def run(self) -> None:
        """Queue until stopped; a failed pass is logged and tried again shortly."""
        await self.poller.run()


class WebhookSender:
    """The outbox sender of channel `webhook`: one signed POST per row."""

    def __init__(self, tenants: Tenants, secret: bytes) -> None:
        self._tenants = tenants
        self._secret = secret
        self._http: aiohttp.ClientSession | None = None

    async def send(self, recipient: str, payload: Mapping[str, Any]) -> str | None:
        tenant = self._tenants.by_slug(recipient) if recipient in self._tenants else None
        if tenant is None or tenant.webhook_url is None:
            raise SendError(f"{recipient} has no webhook_url any more", retryable=False)
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=TIMEOUT)
        body = body_of(payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "rightsdesk-webhooks/1",
            "X-Rightsdesk-Event": str(payload.get("id", "")),
            SIGNATURE_HEADER: sign(webhook_secret(self._secret, recipient), body, int(time.time())),
        }
        try:
            async with self._http.post(
                str(tenant.webhook_url), data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"webhook: {type(exc).__name__}", retryable=True) from None
        if 200 <= status < 300:
            return f"http-{status}"
        retryable = status >= 500 or status in RETRYABLE
        raise SendError(f"webhook answered {status}", retryable=retryable)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
