"""Simulated WhatsApp customers: whole intake conversations through signed webhooks.

Each customer types one message, waits for the bot's answer (as the fake Twilio records
it) and, when the bot mailed a verification code, for that mail at the loopback SMTP
server; then types the next. Used by `bench.webhooks` and `bench.peer_fides`.
"""

from __future__ import annotations

import asyncio
import gc
import random
import re
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from typing import Any

import aiohttp
from aiosmtpd.controller import Controller

from bench.common import summary_ms
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio, inbound_whatsapp_form, sign_twilio_request
from tests.processes import free_port
from tests.service import PUBLIC

# The three shipped tenants' WhatsApp senders (config/tenants/*.toml).
OD = "whatsapp:+14155238881"  # optician-dynamics: no complaints; 7 business days
JOO = "whatsapp:+14155238882"  # jooptics
OPT = "whatsapp:+14155238883"  # optimizory
CODE = "<code>"
EMAIL = "<email>"
REPLY_TIMEOUT = 30.0

# name: (weight, the tenants it may go to, what the customer types, files a ticket)
SCRIPTS: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {
    # a complaint needs a few words and no proof of identity
    "complaint": (
        4,
        (JOO, OPT),
        ("I want to make a complaint", "You did not answer my letter for a month", "yes"),
    ),
    # STOP: marketing opt-out at once, one acknowledgement, recorded as a resolved ticket
    "opt_out": (3, (OD, JOO, OPT), ("STOP",)),
    # erasure: confirm, give the email the business knows, reply with the mailed code
    "erasure": (3, (OD, OPT), ("Please delete my data", "yes", EMAIL, CODE)),
}


class RecordingTwilio(FakeTwilio):
    """The fake Twilio, also handing each created message's body to its recipient's queue."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox: defaultdict[str, asyncio.Queue[tuple[float, str]]] = defaultdict(asyncio.Queue)
        self.created = 0

    def _create_message(self, form: dict[str, Any]) -> dict[str, Any]:
        message = super()._create_message(form)
        self.created += 1
        self.inbox[form["To"]].put_nowait((time.perf_counter(), str(message.get("body", ""))))
        return message


class RecordingTelegram(FakeTelegram):
    """The fake Telegram; counts sends (its `rate_violations` checks the Bot API limits)."""


class MailBox:
    """A loopback SMTP server (aiosmtpd) that hands each mailed code to the event loop."""

    CODE_RE = re.compile(rb"\b(\d{6})\b")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.codes: defaultdict[str, asyncio.Queue[tuple[float, str]]] = defaultdict(asyncio.Queue)
        self.received = 0
        self.port = free_port()
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> MailBox:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        text = body.get_content().encode() if body is not None else envelope.content
        match = self.CODE_RE.search(text)
        if match:
            for rcpt in envelope.rcpt_tos:
                self.loop.call_soon_threadsafe(self._deliver, rcpt, match.group(1).decode())
        return "250 Message accepted for delivery"

    def _deliver(self, rcpt: str, code: str) -> None:
        self.received += 1
        self.codes[rcpt].put_nowait((time.perf_counter(), code))


@dataclass
class Customer:
    number: int
    script: str
    to: str
    texts: tuple[str, ...]
    step: int = 0
    code: str | None = None

    @property
    def address(self) -> str:
        return f"whatsapp:+92300{self.number:07d}"

    @property
    def email(self) -> str:
        return f"customer{self.number}@example.com"

    @property
    def done(self) -> bool:
        return self.step >= len(self.texts)

    def next_text(self) -> str:
        text = self.texts[self.step]
        if text == EMAIL:
            return self.email
        if text == CODE:
            return self.code or "000000"
        return text


class LoopWatch:
    """The driver's own stalls, which a webhook's measured latency includes: how late a
    short sleep on the driver's loop wakes, and how long its garbage collections take.

    with LoopWatch() as watch: …; watch.summary()
    """

    TICK = 0.005  # seconds

    def __init__(self) -> None:
        self.late: list[float] = []
        self.gc_pauses: list[float] = []
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.TICK)
            self.late.append(max(0.0, loop.time() - before - self.TICK))

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()

    def summary(self) -> dict[str, Any]:
        return {
            "tick_late": summary_ms(self.late),
            "gc_pauses": summary_ms(self.gc_pauses),
            "gc_total_ms": round(sum(self.gc_pauses) * 1000, 1),
        }


def slow_seconds(
    at: list[float], latencies: list[float], *, over: float = 0.05, top: int = 5
) -> list[dict[str, Any]]:
    """The seconds (from the first send) with the most webhooks slower than `over`."""
    if not at:
        return []
    first = min(at)
    slow: Counter[int] = Counter()
    worst: dict[int, float] = {}
    for sent, latency in zip(at, latencies, strict=True):
        if latency > over:
            second = int(sent - first)
            slow[second] += 1
            worst[second] = max(worst.get(second, 0.0), latency)
    return [
        {"second": s, "slower": n, "max_ms": round(worst[s] * 1000, 1)}
        for s, n in slow.most_common(top)
    ]


@dataclass
class Stats:
    """What the customers saw."""

    webhook: list[float] = field(default_factory=list)  # POST answered (seconds)
    webhook_at: list[float] = field(default_factory=list)  # when each of those was sent
    reply: list[float] = field(default_factory=list)  # POST sent -> bot's answer at Twilio
    code_mail: list[float] = field(default_factory=list)  # email sent -> code at SMTP
    lag: list[float] = field(default_factory=list)  # open loop: send later than planned
    statuses: Counter[int] = field(default_factory=Counter)
    sent: int = 0
    no_reply: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    conversations: Counter[str] = field(default_factory=Counter)  # finished, by script
    started: Counter[str] = field(default_factory=Counter)


class Customers:
    """Makes customers, posts their messages and waits for the answers."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        twilio: RecordingTwilio,
        mail: MailBox | None,
        *,
        seed: int = 7,
        first_number: int = 1,
        scripts: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] | None = None,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.reply_timeout = reply_timeout
        self.http, self.base, self.twilio, self.mail = http, base, twilio, mail
        self.rng = random.Random(seed)
        self.next_number = first_number
        self.scripts = scripts or SCRIPTS
        self.names = list(self.scripts)
        self.weights = [self.scripts[n][0] for n in self.names]
        self.url = base + "/webhooks/whatsapp"
        self.signed_url = PUBLIC + "/webhooks/whatsapp"

    def new_customer(self) -> Customer:
        name = self.rng.choices(self.names, self.weights)[0]
        _weight, tenants, texts = self.scripts[name]
        customer = Customer(self.next_number, name, self.rng.choice(tenants), texts)
        self.next_number += 1
        return customer

    async def post(self, customer: Customer, text: str, stats: Stats) -> float | None:
        """POST one signed message; the moment it was sent, or None if it failed."""
        form = inbound_whatsapp_form(from_=customer.address, to=customer.to, body=text)
        signature = sign_twilio_request(self.twilio.auth_token, self.signed_url, form)
        started = time.perf_counter()
        try:
            async with self.http.post(
                self.url, data=form, headers={"X-Twilio-Signature": signature}
            ) as response:
                await response.read()
                stats.statuses[response.status] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.errors[type(exc).__name__] += 1
            return None
        stats.webhook.append(time.perf_counter() - started)
        stats.webhook_at.append(started)
        stats.sent += 1
        return started if response.status == 200 else None

    async def step(self, customer: Customer, stats: Stats) -> bool:
        """Send the customer's next message and wait for what it causes; False on a timeout."""
        if customer.step == 0:
            stats.started[customer.script] += 1
        queue = self.twilio.inbox[customer.address]
        while not queue.empty():  # an extra answer to the previous message
            queue.get_nowait()
        is_email = customer.texts[customer.step] == EMAIL
        sent_at = await self.post(customer, customer.next_text(), stats)
        customer.step += 1
        if sent_at is None:
            return False
        try:
            async with asyncio.timeout(self.reply_timeout):
                at, _body = await queue.get()
                stats.reply.append(at - sent_at)
                if is_email and self.mail is not None:
                    mail_at, code = await self.mail.codes[customer.email].get()
                    stats.code_mail.append(mail_at - sent_at)
                    customer.code = code
        except TimeoutError:
            stats.no_reply += 1
            return False
        if customer.done:
            stats.conversations[customer.script] += 1
        return True

    async def converse(self, customer: Customer, stats: Stats) -> bool:
        while not customer.done:
            if not await self.step(customer, stats):
                return False
        return True


async def closed_loop(
    customers: Customers, concurrency: int, duration: float, stats: Stats
) -> float:
    """`concurrency` customers at a time, each starting a new conversation when one ends,
    until `duration` has passed (conversations under way then are finished, bounded by
    the reply timeout). Returns the elapsed seconds."""
    deadline = time.perf_counter() + duration
    started = time.perf_counter()

    async def one_seat() -> None:
        for _ in range(100_000):  # bound: far more than fits in any duration used
            if time.perf_counter() >= deadline:
                return
            await customers.converse(customers.new_customer(), stats)

    await asyncio.gather(*(one_seat() for _ in range(concurrency)))
    return time.perf_counter() - started


async def open_loop(customers: Customers, rate: float, duration: float, stats: Stats) -> float:
    """Offer `rate` messages a second for `duration` whatever the answers: each slot goes
    to a customer waiting to type their next message, or to a new customer. Returns the
    seconds until the last answer came (or timed out)."""
    ready: deque[Customer] = deque()
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    total = int(rate * duration)

    async def one(customer: Customer) -> None:
        if await customers.step(customer, stats) and not customer.done:
            ready.append(customer)

    for i in range(total):
        planned = started + i / rate
        delay = planned - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stats.lag.append(max(0.0, loop.time() - planned))
        customer = ready.popleft() if ready else customers.new_customer()
        task = asyncio.create_task(one(customer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:  # every step is bounded by the reply timeout (and the code's, after an email)
        await asyncio.wait(tasks, timeout=customers.reply_timeout * 2 + 5)
    return loop.time() - started


async def blast(
    post: Callable[[int], Any], concurrency: int, duration: float, latencies: list[float]
) -> tuple[int, float]:
    """Closed loop of independent requests (`post(i)` -> status) at `concurrency` for
    `duration`; (how many answered 200, elapsed seconds)."""
    deadline = time.perf_counter() + duration
    started = time.perf_counter()
    ok = 0
    counter = iter(range(10_000_000))

    async def worker() -> None:
        nonlocal ok
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            status = await post(next(counter))
            latencies.append(time.perf_counter() - t0)
            ok += status == 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, time.perf_counter() - started
