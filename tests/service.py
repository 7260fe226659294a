"""A running rightsdesk (the real app on a loopback port) wired to the loopback fakes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from bot.app import create_app
from bot.settings import Settings
from tests.conftest import TENANTS_DIR
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio, sign_twilio_request

PUBLIC = "https://desk.example.test"
WEBHOOK_SECRET = "test-webhook-secret_1"


async def eventually(
    check: Callable[[], Any], *, timeout: float = 15.0, every: float = 0.05
) -> Any:
    """Wait until `check()` (or what it returns, when that is awaitable) is truthy and
    return it; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(every)


@dataclass
class Service:
    settings: Settings
    server: TestServer
    http: aiohttp.ClientSession
    telegram: FakeTelegram
    twilio: FakeTwilio

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def post_whatsapp(
        self,
        form: dict[str, str],
        *,
        path: str = "/webhooks/whatsapp",
        signature: str | None = None,
    ) -> aiohttp.ClientResponse:
        """POST a form to a Twilio webhook, signed as Twilio would unless `signature` is given."""
        if signature is None:
            signature = sign_twilio_request(self.twilio.auth_token, PUBLIC + path, form)
        return await self.http.post(
            self.url + path, data=form, headers={"X-Twilio-Signature": signature}
        )

    async def post_telegram(
        self, update: Any, *, secret: str | None = WEBHOOK_SECRET
    ) -> aiohttp.ClientResponse:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        return await self.http.post(self.url + "/webhooks/telegram", json=update, headers=headers)


def make_settings(
    database_url: str, telegram: FakeTelegram, twilio: FakeTwilio, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "public_base_url": PUBLIC,
        "tenants_dir": TENANTS_DIR,
        "secret_key": "test-secret-key",
        "telegram_bot_token": telegram.token,
        "telegram_webhook_secret": WEBHOOK_SECRET,
        "telegram_api_base_url": telegram.url,
        "twilio_account_sid": twilio.account_sid,
        "twilio_auth_token": twilio.auth_token,
        "twilio_api_base_url": twilio.url,
    }
    values.update(overrides)
    return Settings(_env_file=None, **{k: v for k, v in values.items() if v is not None})


@asynccontextmanager
async def running_service(
    database_url: str, *, now: Callable[[], datetime] | None = None, **overrides: Any
) -> AsyncIterator[Service]:
    """Fakes first, then the app against them; everything torn down in reverse. `now`
    replaces the app's clock (so that a day can pass)."""
    async with FakeTelegram() as telegram, FakeTwilio() as twilio:
        settings = make_settings(database_url, telegram, twilio, **overrides)
        app = create_app(settings) if now is None else create_app(settings, now=now)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                yield Service(settings, server, http, telegram, twilio)
        finally:
            await server.close()
