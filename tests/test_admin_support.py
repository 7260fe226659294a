"""Helpers of the admin, API and browser tests: a running desk with users and a token,
tenant files with staff and webhooks, seeded tickets, and a signed-in HTTP client."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import sqlalchemy as sa
from aiohttp import web
from sqlmodel import select

from bot import accounts
from bot.app import create_app
from bot.settings import Settings
from storage import people, tickets
from storage.db import create_engine, session_factory, transaction
from storage.enums import TicketStatus
from storage.models import Ticket, TicketEvent, utcnow
from tests.conftest import TENANTS_DIR
from tests.service import Service, running_service

ADMIN = ("ada@example.com", "correct horse battery staple")
VIEWER = ("vic@example.com", "viewer password 12345")
STAFF_IDS = (111, 222)
PREFIX = {"optician-dynamics": "OD", "jooptics": "JOO", "optimizory": "OPT"}


def tenants_dir(tmp: Path, *, webhook_url: str | None = None) -> Path:
    """The shipped tenant files, with staff ids and (optionally) a webhook URL for all."""
    target = tmp / "tenants"
    shutil.copytree(TENANTS_DIR, target, dirs_exist_ok=True)
    for path in target.glob("*.toml"):
        text = path.read_text()
        text = re.sub(r"^staff_user_ids = \[\]", "staff_user_ids = [111, 222]", text, flags=re.M)
        if webhook_url is not None:
            # A top-level key: before the first [table].
            text = re.sub(r"^\[", f'webhook_url = "{webhook_url}"\n\n[', text, count=1, flags=re.M)
        path.write_text(text)
    return target


@dataclass
class Seed:
    """One ticket to create: who asked what, when, on which channel, and where it stands."""

    tenant: str = "optician-dynamics"
    kind: str = "access"
    channel: str = "whatsapp"
    status: TicketStatus = TicketStatus.OPEN
    received_ago: timedelta = timedelta(days=2)
    due_in: timedelta | None = timedelta(days=5)
    closed_ago: timedelta | None = None
    address: str | None = None  # whatsapp:+… or a Telegram chat id
    email: str | None = None
    assignee: int | None = None
    reject_reason: str | None = None
    extra_events: Sequence[tuple[str, dict[str, Any]]] = field(default_factory=tuple)


async def seed(
    database_url: str, specs: Sequence[Seed], *, now: datetime | None = None
) -> list[Ticket]:
    """Create the tickets (with requesters, identities and conversations) straight in storage."""
    now = now or utcnow()
    engine = create_engine(database_url)
    made: list[Ticket] = []
    try:
        async with transaction(session_factory(engine)) as session:
            for n, spec in enumerate(specs):
                address = spec.address or (
                    f"whatsapp:+92300{n:07d}" if spec.channel == "whatsapp" else str(700000 + n)
                )
                requester = await people.requester_for(
                    session,
                    tenant=spec.tenant,
                    kind=spec.channel,
                    value=address,
                    now=now,
                    display_name=f"Customer {n}",
                )
                conversation = await people.conversation_for_update(
                    session, channel=spec.channel, address=address, tenant=spec.tenant, now=now
                )
                conversation.requester_id = requester.id
                session.add(conversation)
                if spec.email:
                    assert requester.id is not None
                    await people.prove_identity(
                        session,
                        requester_id=requester.id,
                        tenant=spec.tenant,
                        kind="email",
                        value=spec.email,
                        now=now,
                    )
                received = now - spec.received_ago
                ticket = await tickets.create_ticket(
                    session,
                    tenant=spec.tenant,
                    ref_prefix=PREFIX[spec.tenant],
                    kind=spec.kind,
                    channel=spec.channel,
                    received_at=received,
                    status=spec.status,
                    requester_id=requester.id,
                    due_at=now + spec.due_in if spec.due_in is not None else None,
                    clock_started_at=received if spec.due_in is not None else None,
                )
                if spec.assignee is not None:
                    ticket.assignee_user_id = spec.assignee
                    ticket.assignee_name = f"staff {spec.assignee}"
                if spec.closed_ago is not None:
                    ticket.closed_at = now - spec.closed_ago
                if spec.reject_reason is not None:
                    await tickets.add_event(
                        session,
                        ticket,
                        actor="staff:111",
                        kind="rejected",
                        at=ticket.closed_at or now,
                        data={"status": "rejected", "reason": spec.reject_reason},
                    )
                for kind, data in spec.extra_events:
                    await tickets.add_event(
                        session, ticket, actor="system", kind=kind, at=now, data=data
                    )
                session.add(ticket)
                await session.flush()
                made.append(ticket)
    finally:
        await engine.dispose()
    return made


async def rows(database_url: str, model: type, *where: Any) -> list[Any]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            query = select(model)
            for condition in where:
                query = query.where(condition)
            return list(await session.exec(query))
    finally:
        await engine.dispose()


@asynccontextmanager
async def writes_held(database_url: str) -> AsyncIterator[None]:
    """Another process holding the database's writes: SQLite's one write lock (BEGIN
    IMMEDIATE), or on PostgreSQL the sign-in tables against any change; reads go on."""
    if database_url.startswith("sqlite"):
        other = sqlite3.connect(database_url.split("///", 1)[1], isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
        finally:
            other.close()  # rolls back
        return
    url = database_url.replace("postgresql+asyncpg", "postgresql", 1)
    other_pg = await asyncpg.connect(url)
    try:
        async with other_pg.transaction():
            await other_pg.execute("LOCK TABLE api_token, admin_session IN EXCLUSIVE MODE")
            yield
    finally:
        await other_pg.close()


async def set_values(database_url: str, model: type, **values: Any) -> None:
    """Set columns of every row of `model`'s table (to move a recorded time back)."""
    engine = create_engine(database_url)
    try:
        async with transaction(session_factory(engine)) as session:
            await session.exec(sa.update(model).values(**values))  # type: ignore[call-overload]
    finally:
        await engine.dispose()


async def events_of_ref(database_url: str, ref: str) -> list[TicketEvent]:
    found = await rows(database_url, Ticket, Ticket.ref == ref)
    return await rows(database_url, TicketEvent, TicketEvent.ticket_id == found[0].id)


async def make_accounts(database_url: str) -> str:
    """An admin, a viewer and an API token; the token."""
    engine = create_engine(database_url)
    try:
        factory = session_factory(engine)
        await accounts.create_admin(factory, email=ADMIN[0], password=ADMIN[1], role="admin")
        await accounts.create_admin(factory, email=VIEWER[0], password=VIEWER[1], role="viewer")
        return await accounts.create_token(factory, name="crm")
    finally:
        await engine.dispose()


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


class Browser:
    """A cookie-keeping HTTP client that signs in and posts forms with their CSRF token."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers or {}
        )
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, str]:
        response = await self.http.get(self.base + path, **kwargs)
        text = await response.text()
        if found := _CSRF.search(text):
            self.csrf = found.group(1)
        return response, text

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True, **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, str]:
        form = dict(data or {})
        if csrf:
            form["csrf"] = self.csrf
        response = await self.http.post(self.base + path, data=form, **kwargs)
        text = await response.text()
        if found := _CSRF.search(text):
            self.csrf = found.group(1)
        return response, text

    async def login(self, email: str, password: str) -> aiohttp.ClientResponse:
        _, page = await self.get("/admin/login")
        token = _LOGIN_CSRF.search(page)
        assert token, page
        response = await self.http.post(
            self.base + "/admin/login",
            data={
                "login_csrf": token.group(1),
                "email": email,
                "password": password,
                "next": "/admin/tickets",
            },
        )
        text = await response.text()
        if found := _CSRF.search(text):
            self.csrf = found.group(1)
        return response


@dataclass
class Desk:
    svc: Service
    token: str
    database_url: str

    @property
    def url(self) -> str:
        return self.svc.url

    @asynccontextmanager
    async def browser(
        self, who: tuple[str, str] | None = ADMIN, **kwargs: Any
    ) -> AsyncIterator[Browser]:
        browser = Browser(self.url, **kwargs)
        try:
            if who is not None:
                response = await browser.login(*who)
                assert response.status == 200 and response.url.path == "/admin/tickets"
            yield browser
        finally:
            await browser.close()

    async def api(self, path: str, token: str | None = "default") -> aiohttp.ClientResponse:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        return await self.svc.http.get(self.url + "/api/v1" + path, headers=headers)


@asynccontextmanager
async def admin_desk(database_url: str, tmp: Path, **overrides: Any) -> AsyncIterator[Desk]:
    """The real service (workers on, scheduler off unless asked) with accounts made."""
    token = await make_accounts(database_url)
    overrides.setdefault(
        "tenants_dir", tenants_dir(tmp, webhook_url=overrides.pop("webhook_url", None))
    )
    overrides.setdefault("run_scheduler", False)
    async with running_service(database_url, **overrides) as svc:
        yield Desk(svc, token, database_url)


class ThreadedService:
    """The real app on a loopback port, in a thread with its own event loop, for callers
    that block (schemathesis's requests, Playwright's sync API)."""

    def __init__(self, settings: Settings, *, workers: bool = True) -> None:
        self.settings = settings
        self.workers = workers
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, name="rightsdesk-test", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(create_app(self.settings, workers=self.workers))
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(30), "the service did not start"
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def plain_settings(database_url: str, tmp: Path, **overrides: Any) -> Settings:
    """Settings with no channel credentials (the sandbox's case) and no scheduler."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "tenants_dir": tenants_dir(tmp),
        "secret_key": "browser-test-secret",
        "run_scheduler": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)
