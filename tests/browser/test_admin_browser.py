"""The admin pages in a real browser: Debian's chromium driven by Playwright.

Log in, filter the list, open a ticket, reveal a contact, export the CSV, file a request
as a sandbox customer and find it in the list; the pages on a phone and right-to-left.
Screenshots go to tests/artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest_asyncio

from storage.enums import TicketStatus
from storage.models import Ticket
from tests.conftest import ROOT, need
from tests.test_admin_support import ADMIN, VIEWER, Seed, admin_desk, rows, seed

NO_CHANNELS: dict[str, Any] = {
    "telegram_bot_token": None,
    "telegram_webhook_secret": None,
    "twilio_account_sid": None,
    "twilio_auth_token": None,
}

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
TIMEOUT_MS = 15_000


@pytest_asyncio.fixture
async def chromium() -> AsyncIterator[Any]:
    need(os.path.exists(CHROMIUM), f"chromium is not installed at {CHROMIUM}")
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - the test extra installs it
        need(False, "playwright is not installed (pip install -e '.[test]')")
        raise
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


@pytest_asyncio.fixture
async def desk(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, list[Ticket], str]]:
    """The service with no channel credentials (so the sandbox is on), and some tickets."""
    made = await seed(
        database_url,
        [
            Seed(
                kind="erasure",
                due_in=timedelta(hours=-20),
                address="whatsapp:+923001112233",
                email="amina@example.com",
            ),
            Seed(kind="access", due_in=timedelta(hours=6)),
            Seed(tenant="jooptics", kind="complaint", channel="telegram", due_in=timedelta(days=2)),
            Seed(tenant="jooptics", kind="access", due_in=timedelta(days=12)),
            Seed(
                tenant="optimizory",
                kind="access",
                status=TicketStatus.RESOLVED,
                closed_ago=timedelta(hours=3),
            ),
        ],
    )
    engine_name = "pg" if database_url.startswith("postgresql") else "sqlite"
    async with admin_desk(database_url, tmp_path, **NO_CHANNELS) as service:
        yield service.url, made, engine_name


async def _shot(page: Any, name: str, engine: str) -> None:
    path = ARTIFACTS / f"{engine}-{name}.png"
    path.unlink(missing_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), f"no screenshot at {path}"


async def _login(page: Any, base: str, who: tuple[str, str]) -> None:
    await page.goto(base + "/admin/tickets")
    assert "/admin/login" in page.url  # sent to the login page first
    await page.fill("input[name=email]", who[0])
    await page.fill("input[name=password]", who[1])
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(r".*/admin/tickets$"))


async def _no_horizontal_scroll(page: Any) -> None:
    overflow = await page.evaluate(
        "() => document.scrollingElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, f"the page scrolls sideways by {overflow}px"


async def test_an_admin_works_through_the_pages(
    chromium: Any, desk: tuple[str, list[Ticket], str], database_url: str
) -> None:
    base, made, engine = desk
    context = await chromium.new_context(
        viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    # Log in.
    await _login(page, base, ADMIN)
    assert await page.locator("h1").inner_text() == "Tickets"
    refs = await page.locator("table.tickets tbody a").all_inner_texts()
    assert refs == [made[0].ref, made[1].ref, made[2].ref, made[3].ref]  # by deadline
    assert await page.locator("tr.due-overdue").count() == 1
    await _shot(page, "01-tickets", engine)

    # Filter.
    await page.select_option("select[name=tenant]", "jooptics")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url(re.compile(r".*tenant=jooptics.*"))
    filtered = await page.locator("table.tickets tbody a").all_inner_texts()
    assert filtered == [made[2].ref, made[3].ref]
    await _shot(page, "02-filtered", engine)

    # Export the filtered list as CSV.
    async with page.expect_download() as download_info:
        await page.click("a.export")
    download = await download_info.value
    body = Path(await download.path()).read_text()
    table = list(csv.DictReader(io.StringIO(body)))
    assert [r["reference"] for r in table] == [made[2].ref, made[3].ref]
    wanted = {"request_date", "request_type", "channel", "response_date", "response"}
    assert wanted | {"denial_reason"} <= set(table[0])

    # Open a ticket and reveal its contacts.
    await page.goto(base + "/admin/tickets")
    await page.click(f"text={made[0].ref}")
    await page.wait_for_url(re.compile(rf".*/admin/tickets/{made[0].ref}$"))
    contacts = await page.locator(".contacts").inner_text()
    assert "amina@example.com" not in contacts and "am***@example.com" in contacts
    await _shot(page, "03-ticket-masked", engine)
    await page.click("text=Reveal contacts")
    await page.wait_for_url(re.compile(r".*reveal=\d+"))
    contacts = await page.locator(".contacts").inner_text()
    assert "amina@example.com" in contacts and "whatsapp:+923001112233" in contacts
    await _shot(page, "04-ticket-revealed", engine)

    # Act: a staff note (with Arabic in it).
    await page.fill("textarea[name=text]", "Asked the branch for the file — ملاحظة")
    await page.click("form[action$='/note'] button")
    await page.wait_for_url(re.compile(r".*done=note"))
    assert "Note added." in await page.locator(".notice").inner_text()

    # The sandbox: file a complaint as a WhatsApp customer, then find it in the list.
    await page.goto(base + "/admin/sandbox")
    await page.select_option("select[name=tenant]", "optician-dynamics")
    await page.select_option("select[name=channel]", "whatsapp")
    await page.click("form.sandbox-start button")
    await page.wait_for_url(re.compile(r".*/admin/sandbox/\d+$"))
    for text in ("Please delete my data", "yes", "sandbox.customer@example.com"):
        await _say(page, text)
    # The verification mail is shown in the sandbox (and only there), code and all.
    code = re.search(r"your code is (\d{6})", await page.locator("ol.chat").inner_text())
    assert code, await page.locator("ol.chat").inner_text()
    await _say(page, code.group(1))
    transcript = await page.locator("ol.chat").inner_text()
    filed = re.search(r"OD-\d{4}-\d{5}", transcript)
    assert filed, transcript
    await _shot(page, "05-sandbox", engine)
    await page.click("nav >> text=Tickets")
    await page.wait_for_url(re.compile(r".*/admin/tickets$"))
    assert filed.group(0) in await page.locator("table.tickets tbody").inner_text()
    await page.click(f"text={filed.group(0)}")
    assert await page.locator(".badge").inner_text() == "sandbox"
    await _shot(page, "06-sandbox-ticket", engine)

    # Charts and the yearly report render.
    await page.goto(base + "/admin/charts")
    assert await page.locator("svg.chart").count() == 3
    await _shot(page, "07-charts", engine)
    await page.goto(base + "/admin/reports")
    assert "§7102" in await page.content()

    # Log out: the pages are closed again.
    await page.click("text=Log out")
    await page.wait_for_url(re.compile(r".*/admin/login$"))
    await page.goto(base + "/admin/tickets")
    assert "/admin/login" in page.url
    assert problems == [], problems  # no CSP violations, no script errors
    await context.close()
    erasure = [t for t in await rows(database_url, Ticket) if t.ref == filed.group(0)]
    assert erasure and erasure[0].kind == "erasure" and erasure[0].status == "open"


async def _say(page: Any, text: str) -> None:
    await page.fill("form.say input[name=text]", text)
    async with page.expect_navigation():
        await page.click("form.say button")


async def test_pages_fit_a_phone_and_right_to_left(
    chromium: Any, desk: tuple[str, list[Ticket], str]
) -> None:
    base, made, engine = desk
    context = await chromium.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await _login(page, base, ADMIN)
    for path, name in (
        ("/admin/tickets", "phone-tickets"),
        (f"/admin/tickets/{made[0].ref}", "phone-ticket"),
        ("/admin/charts", "phone-charts"),
        ("/admin/reports", "phone-report"),
    ):
        await page.goto(base + path)
        await _no_horizontal_scroll(page)
        await _shot(page, name, engine)
        # The same page laid out right to left (as an Arabic or Urdu translation would be).
        await page.evaluate("() => { document.documentElement.dir = 'rtl'; }")
        await _no_horizontal_scroll(page)
        await _shot(page, name + "-rtl", engine)
    await context.close()


async def test_a_viewer_sees_no_actions(chromium: Any, desk: tuple[str, list[Ticket], str]) -> None:
    base, made, engine = desk
    context = await chromium.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await _login(page, base, VIEWER)
    await page.goto(base + f"/admin/tickets/{made[0].ref}")
    assert await page.locator("text=Reveal contacts").count() == 0
    assert await page.locator("form[action$='/resolve']").count() == 0
    assert await page.locator("nav >> text=Sandbox").count() == 0
    response = await page.goto(base + "/admin/sandbox")
    assert response is not None and response.status == 403
    await _shot(page, "viewer-403", engine)
    await context.close()
