"""Outbound webhooks: ticket events POSTed to the tenant's URL, signed with HMAC-SHA256,
through the durable outbox (retried), each event queued once however many relays run."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.tenants import load_tenants
from bot.webhooks_out import SIGNATURE_HEADER, WebhookRelay, sign, verify, webhook_secret
from storage.admin_models import WebhookRelay as WebhookRelayState
from storage.db import SessionFactory
from storage.models import OutboundMessage
from tests.service import eventually
from tests.test_admin_support import Seed, admin_desk, rows, seed, tenants_dir

SECRET = b"test-secret-key"  # tests.service's SECRET_KEY


@dataclass
class Receiver:
    """A business's endpoint: records each delivery, answers `fail_first` times with 500."""

    fail_first: int = 0
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        if len(self.calls) <= self.fail_first:
            return web.Response(status=500, text="try later")
        return web.Response(status=204)

    def delivered(self) -> list[dict[str, object]]:
        ok = self.calls[self.fail_first :]
        return [json.loads(body) for _, body in ok]


@asynccontextmanager
async def receiver(fail_first: int = 0) -> AsyncIterator[tuple[Receiver, str]]:
    target = Receiver(fail_first)
    app = web.Application()
    app.router.add_post("/hooks", target.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield target, str(server.make_url("/hooks"))
    finally:
        await server.close()


def test_signatures_verify_and_expire() -> None:
    key = webhook_secret(SECRET, "jooptics")
    assert key != webhook_secret(SECRET, "optimizory")
    body = b'{"a":1}'
    header = sign(key, body, 1_800_000_000)
    assert verify(key, body, header, now=1_800_000_010)
    assert not verify(key, body + b" ", header, now=1_800_000_010)
    assert not verify(webhook_secret(b"other", "jooptics"), body, header, now=1_800_000_010)
    assert not verify(key, body, header, now=1_800_000_000 + 301)  # replayed too late
    assert not verify(key, body, "garbage", now=1_800_000_000)


async def test_ticket_events_are_posted_signed_and_retried(
    database_url: str, tmp_path: Path
) -> None:
    (ticket,) = await seed(database_url, [Seed(tenant="jooptics")])
    async with (
        receiver(fail_first=1) as (target, url),
        admin_desk(database_url, tmp_path, webhook_url=url) as desk,
        desk.browser() as browser,
    ):
        # The relay's first pass marks where history ends; what came before is never sent.
        for _ in range(200):
            if await rows(database_url, WebhookRelayState):
                break
            await asyncio.sleep(0.05)
        response, _ = await browser.post(f"/admin/tickets/{ticket.ref}/note", {"text": "hello"})
        assert response.status == 200
        await eventually(lambda: target.delivered(), timeout=20)
        headers, body = target.calls[-1]
        # The first try got 500 and was retried with the same event id.
        assert len(target.calls) == 2
        assert target.calls[0][0]["X-Rightsdesk-Event"] == headers["X-Rightsdesk-Event"]
        key = webhook_secret(SECRET, "jooptics")
        assert verify(key, body, headers[SIGNATURE_HEADER], now=time.time())
        assert headers["Content-Type"] == "application/json"
        payload = json.loads(body)
        assert payload["type"] == "ticket.note" and payload["tenant"] == "jooptics"
        assert payload["ticket"]["ref"] == ticket.ref
        assert payload["event"]["data"] == {"text": "hello"}
        assert payload["event"]["actor"].startswith("admin:")
        # The admin page lists the delivery and shows the signing secret.
        _, page = await browser.get("/admin/webhooks")
        assert key in page and "ticket.note" in page
    sent = [m for m in await rows(database_url, OutboundMessage) if m.channel == "webhook"]
    assert len(sent) == 1 and sent[0].status == "sent" and sent[0].attempts == 2
    assert sent[0].dedupe_key == f"webhook:{payload['id'].removeprefix('evt_')}"


async def test_relays_queue_each_event_once(
    database_url: str, engine: AsyncEngine, sessions: SessionFactory, tmp_path: Path
) -> None:
    tenants = load_tenants(tenants_dir(tmp_path, webhook_url="https://crm.example.test/hooks"))
    first, second = WebhookRelay(sessions, tenants), WebhookRelay(sessions, tenants)
    await seed(database_url, [Seed()])  # history: never sent
    assert await first.run_once() == 0
    await seed(database_url, [Seed(), Seed(tenant="optimizory")])
    counts = await asyncio.gather(first.run_once(), second.run_once())
    assert sorted(counts) == [0, 2]
    assert await first.run_once() == 0 and await second.run_once() == 0
    queued = [m for m in await rows(database_url, OutboundMessage) if m.channel == "webhook"]
    assert sorted(m.recipient for m in queued) == ["optician-dynamics", "optimizory"]
    assert all(m.payload["type"] == "ticket.created" for m in queued)
