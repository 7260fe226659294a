"""Who gets into the admin pages, and what they may do there: sessions, CSRF, throttling,
roles, security headers, and the record of every ticket view and contact reveal."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from bot import admin_service
from handlers.admin import client_ip
from storage.admin_models import AdminAudit, AdminSession, LoginAttempt, SandboxChat
from storage.db import create_engine, session_factory
from storage.enums import TicketStatus
from storage.models import InboundMessage, Ticket, TicketEvent, utcnow
from tests.test_admin_support import (
    ADMIN,
    VIEWER,
    Seed,
    admin_desk,
    make_accounts,
    rows,
    seed,
    set_values,
    writes_held,
)

PAGES = [
    "/admin",
    "/admin/tickets",
    "/admin/tickets.csv",
    "/admin/tickets/OD-2026-00001",
    "/admin/reports",
    "/admin/reports.csv",
    "/admin/charts",
    "/admin/sandbox",
    "/admin/sandbox/1",
    "/admin/webhooks",
]
ACTIONS = ["assign", "note", "extend", "resolve", "reject", "reveal"]
NO_CHANNELS: dict[str, Any] = {
    "telegram_bot_token": None,
    "telegram_webhook_secret": None,
    "twilio_account_sid": None,
    "twilio_auth_token": None,
}


async def test_every_page_needs_a_login(database_url: str, tmp_path: Path) -> None:
    async with admin_desk(database_url, tmp_path) as desk:
        http = desk.svc.http
        for path in PAGES:
            response = await http.get(desk.url + path, allow_redirects=False)
            assert response.status == 302, path
            assert response.headers["Location"].startswith("/admin/login?next="), path
        for action in ACTIONS:
            response = await http.post(
                desk.url + f"/admin/tickets/OD-2026-00001/{action}",
                data={"text": "x"},
                allow_redirects=False,
            )
            assert response.status == 302, action
        # A forged or stale cookie is no session either.
        response = await http.get(
            desk.url + "/admin/tickets",
            cookies={"rd_session": "forged-token"},
            allow_redirects=False,
        )
        assert response.status == 302


async def test_login_sets_a_safe_cookie_and_logout_ends_the_session(
    database_url: str, tmp_path: Path
) -> None:
    async with admin_desk(database_url, tmp_path) as desk, desk.browser(None) as browser:
        response = await browser.login(*ADMIN)
        assert response.status == 200 and response.url.path == "/admin/tickets"
        cookie = response.history[0].headers["Set-Cookie"]
        assert "rd_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
        assert len(await rows(database_url, AdminSession)) == 1
        token = browser.http.cookie_jar.filter_cookies(URL(desk.url))["rd_session"].value
        await browser.get("/admin/tickets")
        response, _ = await browser.post("/admin/logout", allow_redirects=False)
        assert response.status == 303
        assert await rows(database_url, AdminSession) == []
        again = await desk.svc.http.get(
            desk.url + "/admin/tickets", cookies={"rd_session": token}, allow_redirects=False
        )
        assert again.status == 302


async def test_behind_https_the_cookie_is_secure_and_hsts_is_sent(
    database_url: str, tmp_path: Path
) -> None:
    async with admin_desk(database_url, tmp_path) as desk, desk.browser(None) as browser:
        proxied = {"X-Forwarded-Proto": "https"}
        response, page = await browser.get("/admin/login", headers=proxied)
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        token = page.split('name="login_csrf" value="')[1].split('"')[0]
        login = await browser.http.post(
            desk.url + "/admin/login",
            data={"login_csrf": token, "email": ADMIN[0], "password": ADMIN[1], "next": "/admin"},
            headers=proxied,
            cookies={"rd_login": token},  # Secure: the client keeps it for HTTPS only
            allow_redirects=False,
        )
        assert login.status == 303
        cookie = login.headers["Set-Cookie"]
        assert cookie.startswith("__Host-rd_session=") and "Secure" in cookie
        assert "Path=/" in cookie and "Domain" not in cookie
        # Over plain HTTP there is no HSTS.
        plain, _ = await browser.get("/admin/login")
        assert "Strict-Transport-Security" not in plain.headers


async def test_security_headers_on_admin_pages(database_url: str, tmp_path: Path) -> None:
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        for path in (
            "/admin/login",
            "/admin/tickets",
            "/admin/charts",
            "/admin/tickets/NO-2026-00001",
        ):
            response, _ = await browser.get(path)
            csp = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, path
            assert "script-src" not in csp  # no script at all
            assert response.headers["X-Frame-Options"] == "DENY"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Cache-Control"] == "no-store"


def _framed_nowhere(response: Any, what: str) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, what
    assert response.headers.get("X-Frame-Options") == "DENY", what
    assert response.headers.get("X-Content-Type-Options") == "nosniff", what


async def test_security_headers_on_every_kind_of_answer(database_url: str, tmp_path: Path) -> None:
    """Redirects, refusals, downloads and static files carry the headers too; HSTS only
    where the page was reached over HTTPS (a proxy's X-Forwarded-Proto)."""
    async with admin_desk(database_url, tmp_path) as desk:
        anonymous = await desk.svc.http.get(desk.url + "/admin/tickets", allow_redirects=False)
        assert anonymous.status == 302
        _framed_nowhere(anonymous, "the redirect to the login page")
        async with desk.browser(VIEWER) as viewer:
            refused, _ = await viewer.get("/admin/sandbox")
            assert refused.status == 403
            _framed_nowhere(refused, "a refusal")
            exported, _ = await viewer.get("/admin/tickets.csv")
            assert exported.status == 200 and exported.content_type == "text/csv"
            _framed_nowhere(exported, "the CSV export")
            assert exported.headers["Cache-Control"] == "no-store"
            _, page = await viewer.get("/admin/tickets")
            css = re.search(r'href="(/admin/static/[^"]+\.css)"', page)
            assert css, page
            static, _ = await viewer.get(css.group(1))
            assert static.status == 200
            _framed_nowhere(static, "a static file")
            assert not any(
                "Strict-Transport-Security" in r.headers for r in (refused, exported, static)
            )
            https, _ = await viewer.get("/admin/tickets", headers={"X-Forwarded-Proto": "https"})
            # The plain-HTTP session cookie is not the HTTPS one: sent to sign in again.
            assert https.history and https.history[0].status == 302
            for answer in (*https.history, https):
                hsts = answer.headers.get("Strict-Transport-Security", "")
                assert hsts.startswith("max-age=") and int(hsts[8:].split(";")[0]) >= 15552000
                _framed_nowhere(answer, "behind HTTPS")


async def test_wrong_passwords_are_throttled(database_url: str, tmp_path: Path) -> None:
    async with admin_desk(database_url, tmp_path) as desk, desk.browser(None) as browser:
        for _ in range(5):
            response = await browser.login(ADMIN[0], "not the password at all")
            assert response.status == 401
        # Now even the right password is refused for a while, and says why.
        response = await browser.login(*ADMIN)
        assert response.status == 429
        assert "Too many failed attempts" in await response.text()
        # Another account from the same address still works.
        response = await browser.login(*VIEWER)
        assert response.status == 200
        attempts = await rows(database_url, LoginAttempt)
        assert sum(1 for a in attempts if not a.ok) == 5  # a throttled try is not even checked
        # An unknown account is throttled the same way (no hint that it does not exist).
        for _ in range(5):
            assert (await browser.login("nobody@example.com", "whatever it is")).status == 401
        assert (await browser.login("nobody@example.com", "whatever it is")).status == 429


async def test_twenty_failures_from_one_address_block_every_account(
    database_url: str, tmp_path: Path
) -> None:
    """The per-address limit: failures spread over many accounts (none reaching its own
    limit of 5) still stop that address, even with the right password."""
    limit = admin_service.MAX_FAILURES_PER_ADDRESS
    async with admin_desk(database_url, tmp_path) as desk, desk.browser(None) as browser:
        for n in range(limit - 1):
            response = await browser.login(f"guess{n}@example.com", "not the password")
            assert response.status == 401, n
        # One below the limit, the right password still gets in...
        response = await browser.login(*ADMIN)
        assert response.status == 200 and response.url.path == "/admin/tickets"
        response = await browser.login(f"guess{limit}@example.com", "not the password")
        assert response.status == 401
        # ...and at the limit nobody does from this address, admin or viewer.
        for who in (ADMIN, VIEWER):
            response = await browser.login(*who)
            assert response.status == 429, who
            assert "Too many failed attempts" in await response.text()
    attempts = await rows(database_url, LoginAttempt)
    assert {a.ip for a in attempts} == {"127.0.0.1"}
    assert sum(1 for a in attempts if not a.ok) == limit


async def test_behind_the_proxy_its_forwarded_address_is_throttled(
    database_url: str, tmp_path: Path
) -> None:
    """The test client connects from 127.0.0.1, as a reverse proxy on the same host would:
    the address that proxy appends to X-Forwarded-For is the one throttled. A client that
    sends its own X-Forwarded-For through the proxy only adds entries to the left."""
    limit = admin_service.MAX_FAILURES_PER_ADDRESS
    attacker = "203.0.113.7"
    async with admin_desk(database_url, tmp_path) as desk:
        for n in range(limit):
            # A new made-up address each time, then the one the proxy saw.
            forwarded = {"X-Forwarded-For": f"10.9.{n}.1, {attacker}"}
            async with desk.browser(None, headers=forwarded) as browser:
                response = await browser.login(f"guess{n}@example.com", "not the password")
                assert response.status == 401, n
        async with desk.browser(None, headers={"X-Forwarded-For": attacker}) as browser:
            response = await browser.login(*ADMIN)
            assert response.status == 429
            assert "Too many failed attempts" in await response.text()
        async with desk.browser(
            None, headers={"X-Forwarded-For": f"{attacker}, 192.0.2.44"}
        ) as someone_else:
            response = await someone_else.login(*ADMIN)
            assert response.status == 200 and response.url.path == "/admin/tickets"
    attempts = await rows(database_url, LoginAttempt)
    assert sorted({a.ip for a in attempts}) == ["192.0.2.44", attacker]
    assert sum(1 for a in attempts if a.ip == attacker and not a.ok) == limit


def _from(peer: str, forwarded: str | None = None) -> Any:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    return make_mocked_request("POST", "/admin/login", headers=headers).clone(remote=peer)


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # Straight from the internet: the header is the client's own words, ignored.
        ("8.8.8.8", "203.0.113.7", "8.8.8.8"),
        ("8.8.8.8", "1.1.1.1, 127.0.0.1", "8.8.8.8"),
        ("2606:4700:4700::1111", "203.0.113.7", "2606:4700:4700::1111"),
        ("::ffff:8.8.8.8", "203.0.113.7", "::ffff:8.8.8.8"),
        ("8.8.8.8", None, "8.8.8.8"),
        # From a proxy on this host or the private network: the entry it appended.
        ("127.0.0.1", "1.1.1.1, 203.0.113.7", "203.0.113.7"),
        ("::1", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.5", "203.0.113.7", "203.0.113.7"),
        ("172.16.3.4", " 203.0.113.7 ", "203.0.113.7"),
        ("192.168.1.2", "203.0.113.7", "203.0.113.7"),
        ("fd00::2", "203.0.113.7", "203.0.113.7"),
        ("::ffff:10.0.0.5", "203.0.113.7", "203.0.113.7"),
        # A proxy that adds nothing (or an empty entry): the proxy itself.
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "203.0.113.7, ", "10.0.0.5"),
    ],
)
def test_client_ip_trusts_x_forwarded_for_only_from_a_proxy(
    peer: str, forwarded: str | None, expected: str
) -> None:
    assert client_ip(_from(peer, forwarded)) == expected


def test_client_ip_without_a_network_peer() -> None:
    assert client_ip(_from("", "203.0.113.7")) == "unknown"
    assert client_ip(make_mocked_request("GET", "/", headers={"X-Forwarded-For": "1.1.1.1"})) == (
        "unknown"
    )


async def test_a_direct_client_cannot_escape_the_throttle_by_forging_x_forwarded_for(
    database_url: str,
) -> None:
    """The non-proxy case, which the loopback test client cannot be: each attempt claims a
    new address, and still all of them count against the peer's."""
    await make_accounts(database_url)
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    now = utcnow()
    limit = admin_service.MAX_FAILURES_PER_ADDRESS
    try:
        for n in range(limit):
            request = _from("8.8.8.8", f"203.0.113.{n + 1}")
            result = await admin_service.sign_in(
                sessions,
                email=f"guess{n}@example.com",
                password="not the password",
                ip=client_ip(request),
                now=now,
            )
            assert isinstance(result, admin_service.Refused) and not result.throttled, n
        forged = _from("8.8.8.8", "198.51.100.99")
        result = await admin_service.sign_in(
            sessions, email=ADMIN[0], password=ADMIN[1], ip=client_ip(forged), now=now
        )
        assert isinstance(result, admin_service.Refused) and result.throttled
        # Another direct client is not affected.
        other = _from("1.1.1.1", "8.8.8.8")
        result = await admin_service.sign_in(
            sessions, email=ADMIN[0], password=ADMIN[1], ip=client_ip(other), now=now
        )
        assert isinstance(result, admin_service.SignedIn)
    finally:
        await engine.dispose()
    attempts = await rows(database_url, LoginAttempt)
    assert {a.ip for a in attempts} == {"8.8.8.8", "1.1.1.1"}


async def test_login_form_needs_its_csrf_cookie(database_url: str, tmp_path: Path) -> None:
    async with admin_desk(database_url, tmp_path) as desk:
        response = await desk.svc.http.post(
            desk.url + "/admin/login",
            data={"login_csrf": "made-up", "email": ADMIN[0], "password": ADMIN[1]},
            allow_redirects=False,
        )
        assert response.status == 403
        assert await rows(database_url, AdminSession) == []


@pytest.mark.parametrize("action", ACTIONS)
async def test_posts_without_the_csrf_token_are_refused(
    database_url: str, tmp_path: Path, action: str
) -> None:
    (ticket,) = await seed(database_url, [Seed()])
    form = {"text": "a note", "reason": "because", "assignee_user_id": "111"}
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        path = f"/admin/tickets/{ticket.ref}/{action}"
        missing, _ = await browser.post(path, form, csrf=False, allow_redirects=False)
        assert missing.status == 403
        wrong, _ = await browser.post(path, {**form, "csrf": "x" * 43}, csrf=False)
        assert wrong.status == 403
        # The right token, but posted from another site.
        await browser.get(f"/admin/tickets/{ticket.ref}")
        foreign, _ = await browser.post(
            path, form, headers={"Origin": "https://evil.example"}, allow_redirects=False
        )
        assert foreign.status == 403
    (after,) = await rows(database_url, Ticket)
    assert after.status == TicketStatus.OPEN and after.assignee_user_id is None
    kinds = [e.kind for e in await rows(database_url, TicketEvent)]
    assert kinds == ["created"]
    assert not [a for a in await rows(database_url, AdminAudit) if a.action == "reveal_contacts"]


async def test_other_posts_without_the_csrf_token_are_refused(
    database_url: str, tmp_path: Path
) -> None:
    """Logging out, opening a sandbox chat and speaking in one need the token as well."""
    async with (
        admin_desk(database_url, tmp_path, **NO_CHANNELS) as desk,
        desk.browser() as browser,
    ):
        sandbox_form = {"tenant": "optician-dynamics", "channel": "whatsapp", "language": "en"}
        response, _ = await browser.post("/admin/sandbox", sandbox_form, csrf=False)
        assert response.status == 403
        assert await rows(database_url, SandboxChat) == []
        await browser.get("/admin/sandbox")
        response, _ = await browser.post("/admin/sandbox", sandbox_form)
        assert response.status == 200
        (chat,) = await rows(database_url, SandboxChat)
        response, _ = await browser.post(f"/admin/sandbox/{chat.id}", {"text": "STOP"}, csrf=False)
        assert response.status == 403
        response, _ = await browser.post(
            f"/admin/sandbox/{chat.id}", {"text": "STOP", "csrf": "x" * 43}, csrf=False
        )
        assert response.status == 403
        assert await rows(database_url, InboundMessage) == []
        response, _ = await browser.post("/admin/logout", csrf=False, allow_redirects=False)
        assert response.status == 403
        assert len(await rows(database_url, AdminSession)) == 1
        response, _ = await browser.get("/admin/tickets", allow_redirects=False)
        assert response.status == 200  # still signed in


async def test_a_viewer_sees_but_cannot_act(database_url: str, tmp_path: Path) -> None:
    (ticket,) = await seed(database_url, [Seed(email="amina@example.com")])
    async with admin_desk(database_url, tmp_path) as desk, desk.browser(VIEWER) as browser:
        response, page = await browser.get(f"/admin/tickets/{ticket.ref}")
        assert response.status == 200 and ticket.ref in page
        assert "Reveal contacts" not in page and f"{ticket.ref}/resolve" not in page
        assert "am***@example.com" in page and "amina@example.com" not in page
        for action in ACTIONS:
            response, _ = await browser.post(
                f"/admin/tickets/{ticket.ref}/{action}",
                {"text": "x", "reason": "y", "assignee_user_id": "111"},
            )
            assert response.status == 403, action
        for path in ("/admin/sandbox", "/admin/webhooks"):
            response, _ = await browser.get(path)
            assert response.status == 403
        response, _ = await browser.post(
            "/admin/sandbox", {"tenant": "jooptics", "channel": "telegram"}
        )
        assert response.status == 403
        response, _ = await browser.post("/admin/sandbox/1", {"text": "hello"})
        assert response.status == 403
    (after,) = await rows(database_url, Ticket)
    assert after.status == TicketStatus.OPEN
    assert [e.kind for e in await rows(database_url, TicketEvent)] == ["created"]


async def test_ticket_views_and_reveals_are_recorded(database_url: str, tmp_path: Path) -> None:
    (ticket,) = await seed(
        database_url, [Seed(address="whatsapp:+923001234567", email="amina@example.com")]
    )
    async with admin_desk(database_url, tmp_path) as desk:
        async with desk.browser() as browser:
            _, page = await browser.get(f"/admin/tickets/{ticket.ref}")
            assert "whatsapp:+92********67" in page and "+923001234567" not in page
            assert "amina@example.com" not in page
            response, page = await browser.post(f"/admin/tickets/{ticket.ref}/reveal")
            assert response.status == 200 and "reveal=" in str(response.url)
            assert "whatsapp:+923001234567" in page and "amina@example.com" in page
            revealed_url = str(response.url).removeprefix(desk.url)
            # Reloading without the reveal masks again.
            _, page = await browser.get(f"/admin/tickets/{ticket.ref}")
            assert "amina@example.com" not in page
        async with desk.browser(VIEWER) as viewer:
            # Someone else's reveal link shows nothing.
            _, page = await viewer.get(revealed_url)
            assert "amina@example.com" not in page
    audit = await rows(database_url, AdminAudit)
    views = [a for a in audit if a.action == "view_ticket"]
    reveals = [a for a in audit if a.action == "reveal_contacts"]
    assert len(views) == 4 and all(a.ticket_id == ticket.id for a in views)
    assert len(reveals) == 1 and reveals[0].actor.startswith("admin:")
    assert sum(1 for a in views if a.detail.get("revealed")) == 1
    assert len({a.actor for a in views}) == 2  # the admin and the viewer


async def test_a_session_is_checked_without_writing_and_slides_once_a_minute(
    database_url: str, tmp_path: Path
) -> None:
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        (signed_in,) = await rows(database_url, AdminSession)
        # Within the minute nothing is written: pages are served while another process
        # holds the writes (on SQLite each view once waited for its one writer).
        async with writes_held(database_url):
            for _ in range(3):
                response, _page = await asyncio.wait_for(browser.get("/admin/tickets"), 5)
                assert response.status == 200 and response.url.path == "/admin/tickets"
        (same,) = await rows(database_url, AdminSession)
        assert (same.last_seen_at, same.expires_at) == (
            signed_in.last_seen_at,
            signed_in.expires_at,
        )
        a_while_ago = signed_in.last_seen_at - timedelta(minutes=2)
        await set_values(database_url, AdminSession, last_seen_at=a_while_ago)
        response, _page = await browser.get("/admin/tickets")
        assert response.status == 200 and response.url.path == "/admin/tickets"
        (slid,) = await rows(database_url, AdminSession)
        assert slid.last_seen_at >= signed_in.last_seen_at
        assert slid.expires_at >= signed_in.expires_at
