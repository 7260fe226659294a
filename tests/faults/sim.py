"""Simulated customers and the tallies the fault tests assert on.

A customer here behaves as Twilio and Telegram do on its behalf: each message is one
webhook with one provider id (`MessageSid`, `update_id`), and a webhook that got no answer
or a 5xx is posted again, unchanged, until it is acknowledged. Between messages the
customer waits for the bot's answer, as a person would.

The conversation used everywhere is the menu route to a marketing opt-out: three messages,
three answers, one resolved ticket, no verification and no staff card (cards to a staff
group are paced at 20 a minute, which would make a 100-customer test take minutes).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web
from sqlmodel import col, select

from storage.db import create_engine, session_factory
from storage.inbound import MAX_ATTEMPTS
from storage.models import InboundMessage, OutboundMessage, Ticket
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio, inbound_whatsapp_form, sign_twilio_request
from tests.service import PUBLIC, WEBHOOK_SECRET

OD_NUMBER = "whatsapp:+14155238881"  # optician-dynamics' WhatsApp sender
OD_START = "optician-dynamics"  # its Telegram start parameter
OPT_OUT_ITEM = "7"  # "Stop marketing messages" in its menu

WHATSAPP_SCRIPT = ("hi", OPT_OUT_ITEM, "yes")
TELEGRAM_SCRIPT = (f"/start {OD_START}", OPT_OUT_ITEM, "yes")
# What each answer must say, in order: the menu, the confirmation, the acknowledgement.
EXPECTED_MARKERS = ("7. Stop marketing messages", "Is that right", "will not send you marketing")


class SlowTwilio(FakeTwilio):
    """FakeTwilio answering after a realistic delay (the real API takes 100-500 ms), which
    leaves requests in flight when a fault strikes."""

    latency = 0.2

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.latency)
        return await super()._handle(request)


class SlowTelegram(FakeTelegram):
    """FakeTelegram answering after a realistic delay (see SlowTwilio)."""

    latency = 0.2

    async def _handle_api(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.latency)
        return await super()._handle_api(request)


class Endpoint:
    """Where the providers post: the current `serve` (its URL changes on restart; None while
    it is down, when posting fails as a refused connection would)."""

    def __init__(self) -> None:
        self.url: str | None = None


@dataclass
class Traffic:
    """Every webhook attempt the simulated providers made, by outcome."""

    statuses: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def note(self, outcome: str) -> None:
        self.statuses[outcome] += 1
        self.timeline.append((time.monotonic(), outcome))

    def between(self, start: float, end: float) -> Counter[str]:
        return Counter(outcome for at, outcome in self.timeline if start <= at <= end)


async def deliver_webhook(
    http: aiohttp.ClientSession,
    endpoint: Endpoint,
    traffic: Traffic,
    path: str,
    *,
    form: dict[str, str] | None = None,
    update: dict[str, Any] | None = None,
    twilio_token: str = "",
    deadline: float,
) -> None:
    """POST one webhook until it is acknowledged with 200, as the providers retry."""
    pause = 0.3
    while True:
        outcome = "down"
        url = endpoint.url
        if url is not None:
            try:
                if form is not None:
                    signature = sign_twilio_request(twilio_token, PUBLIC + path, form)
                    headers = {"X-Twilio-Signature": signature}
                    request = http.post(url + path, data=form, headers=headers)
                else:
                    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
                    request = http.post(url + path, json=update, headers=headers)
                async with request as response:
                    await response.read()
                    outcome = str(response.status)
            except (aiohttp.ClientError, TimeoutError):
                outcome = "no answer"
        traffic.note(outcome)
        if outcome == "200":
            return
        if outcome not in ("down", "no answer") and not outcome.startswith("5"):
            raise AssertionError(f"webhook {path} answered {outcome}: not retried by providers")
        if time.monotonic() > deadline:
            raise TimeoutError(f"webhook {path} not acknowledged in time (last: {outcome})")
        await asyncio.sleep(pause * random.uniform(0.7, 1.3))
        pause = min(pause * 1.5, 2.0)


class Customer:
    """One person with a three-message conversation on one channel."""

    channel: str
    address: str
    script: tuple[str, ...]

    def replies(self) -> list[str]:
        raise NotImplementedError

    async def post(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        traffic: Traffic,
        text: str,
        deadline: float,
    ) -> None:
        raise NotImplementedError

    def __init__(self) -> None:
        self.started = self.finished = False
        self.stuck_at: int | None = None  # the step whose answer never came

    async def converse(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        traffic: Traffic,
        *,
        start_after: float,
        think: tuple[float, float],
        timeout: float,
        await_answers: bool = True,
    ) -> None:
        """Say each line, waiting for the answer to it before thinking and going on (or,
        with `await_answers=False`, typing on as people do when no answer comes)."""
        await asyncio.sleep(start_after)
        deadline = time.monotonic() + timeout
        self.started = True
        for step, text in enumerate(self.script):
            if step:
                await asyncio.sleep(random.uniform(*think))
            await self.post(http, endpoint, traffic, text, deadline)
            while await_answers and len(self.replies()) <= step:
                if time.monotonic() > deadline:
                    self.stuck_at = step
                    return
                await asyncio.sleep(0.1)
        self.finished = await_answers

    async def answered(self, deadline: float) -> bool:
        """Wait until every line has had its answer (for customers who did not wait)."""
        while len(self.replies()) < len(self.script):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        self.finished = True
        return True


class WhatsAppCustomer(Customer):
    channel = "whatsapp"
    script = WHATSAPP_SCRIPT

    def __init__(self, twilio: FakeTwilio, n: int) -> None:
        super().__init__()
        self.twilio = twilio
        self.address = f"whatsapp:+92301{n:07d}"

    def replies(self) -> list[str]:
        return [c.params["Body"] for c in self.twilio.sent_messages(to=self.address)]

    async def post(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        traffic: Traffic,
        text: str,
        deadline: float,
    ) -> None:
        form = inbound_whatsapp_form(from_=self.address, to=OD_NUMBER, body=text)
        await deliver_webhook(
            http,
            endpoint,
            traffic,
            "/webhooks/whatsapp",
            form=form,
            twilio_token=self.twilio.auth_token,
            deadline=deadline,
        )


class TelegramCustomer(Customer):
    channel = "telegram"
    script = TELEGRAM_SCRIPT

    def __init__(self, telegram: FakeTelegram, n: int) -> None:
        super().__init__()
        self.telegram = telegram
        self.chat_id = 810_000_000 + n
        self.address = str(self.chat_id)

    def replies(self) -> list[str]:
        return [c.params["text"] for c in self.telegram.sent_messages(chat_id=self.chat_id)]

    async def post(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        traffic: Traffic,
        text: str,
        deadline: float,
    ) -> None:
        update = self.telegram.message_update(self.chat_id, text)
        await deliver_webhook(
            http, endpoint, traffic, "/webhooks/telegram", update=update, deadline=deadline
        )


@dataclass
class Verdict:
    """What the customers received, counted at the fakes."""

    customers: int
    completed: int
    lost: int  # answers that never arrived
    duplicates: int  # answers that arrived more than once
    wrong: list[str]  # customers whose answers are out of order or not the expected ones

    def ok(self) -> bool:
        return self.completed == self.customers and self.lost == self.duplicates == 0


def judge(customers: list[Customer]) -> Verdict:
    """Each customer must have exactly one copy of each of the three answers, in order."""
    lost = duplicates = 0
    wrong: list[str] = []
    for customer in customers:
        replies = customer.replies()
        copies = Counter(replies)
        duplicates += sum(n - 1 for n in copies.values())
        lost += max(0, len(customer.script) - len(copies))
        distinct = list(dict.fromkeys(replies))
        if len(distinct) != len(EXPECTED_MARKERS) or not all(
            marker in reply for marker, reply in zip(EXPECTED_MARKERS, distinct, strict=True)
        ):
            wrong.append(f"{customer.channel} {customer.address}: {replies!r}")
    completed = sum(c.finished for c in customers)
    return Verdict(len(customers), completed, lost, duplicates, wrong)


@dataclass
class Ledger:
    """What the database holds afterwards."""

    tickets: int
    tickets_per_requester: Counter[int]
    ticket_kinds: Counter[str]
    inbound: int
    inbound_unprocessed: int
    inbound_parked: int
    outbox: Counter[str]  # status -> count
    unsent: list[tuple[Any, ...]]  # the outbox rows not sent: what a failure shows


async def ledger(database_url: str) -> Ledger:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            tickets = list(await session.exec(select(Ticket)))
            inbound = list(await session.exec(select(InboundMessage)))
            statuses = await session.exec(
                sa.select(OutboundMessage.status, sa.func.count()).group_by(  # type: ignore[call-overload]
                    OutboundMessage.status
                )
            )
            outbox = Counter({str(status): int(n) for status, n in statuses})
            unsent = [
                (m.id, m.channel, m.status, m.attempts, m.locked_by, m.locked_until, m.last_error)
                for m in await session.exec(
                    select(OutboundMessage).where(col(OutboundMessage.status) != "sent")
                )
            ]
    finally:
        await engine.dispose()
    return Ledger(
        tickets=len(tickets),
        tickets_per_requester=Counter(t.requester_id or 0 for t in tickets),
        ticket_kinds=Counter(t.kind for t in tickets),
        inbound=len(inbound),
        inbound_unprocessed=sum(m.processed_at is None for m in inbound),
        inbound_parked=sum(m.attempts >= MAX_ATTEMPTS for m in inbound),
        outbox=outbox,
        unsent=unsent,
    )


async def in_flight(database_url: str) -> tuple[int, int]:
    """(inbound messages not yet processed, outbox rows not yet sent) right now."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            waiting_in = (
                await session.exec(
                    select(sa.func.count()).where(col(InboundMessage.processed_at).is_(None))
                )
            ).one()
            waiting_out = (
                await session.exec(
                    select(sa.func.count()).where(
                        col(OutboundMessage.status).in_(["pending", "sending"])
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    return int(waiting_in or 0), int(waiting_out or 0)


class TcpProxy:
    """A TCP relay to PostgreSQL that can be cut: `cut()` drops every connection and stops
    listening (new ones are refused), `restore()` listens on the same port again. The shared
    PostgreSQL server stays up for everybody else."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self.connections += 1
        self._open.update((client_w, server_w))
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        finally:
            for writer in (client_w, server_w):
                self._open.discard(writer)
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (OSError, RuntimeError):
        pass
    finally:
        writer.transport.abort()
