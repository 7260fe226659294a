"""The admin pages over real HTTP: the list and its filters, the ticket page, the actions
(and what the requester is told), the §7101 CSV, the §7102 report and the charts."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from bot.desk import file_context
from storage import crypto
from storage.admin_models import AdminAudit
from storage.db import create_engine, session_factory, transaction
from storage.desk_models import DeskFile
from storage.enums import TicketStatus
from storage.models import InboundMessage, OutboundMessage, Ticket, utcnow
from storage.tickets import add_event
from tests.service import eventually
from tests.test_admin_support import VIEWER, Seed, admin_desk, events_of_ref, rows, seed


def _refs(page: str) -> list[str]:
    return re.findall(r'<a href="/admin/tickets/([A-Z]+-\d{4}-\d+)">', page)


async def test_list_filters_counts_and_colours(database_url: str, tmp_path: Path) -> None:
    made = await seed(
        database_url,
        [
            Seed(kind="erasure", due_in=timedelta(hours=-30)),  # overdue
            Seed(kind="access", due_in=timedelta(hours=5), assignee=111),  # due today
            Seed(kind="access", due_in=timedelta(days=2), channel="telegram"),  # soon
            Seed(kind="complaint", tenant="jooptics", due_in=timedelta(days=20)),  # fine
            Seed(status=TicketStatus.RESOLVED, closed_ago=timedelta(days=1)),
            Seed(kind="rectification", status=TicketStatus.AWAITING_VERIFICATION, due_in=None),
        ],
    )
    refs = [t.ref for t in made]
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        _, page = await browser.get("/admin/tickets")
        # Active tickets by deadline; the one without a deadline last; resolved ones hidden.
        assert _refs(page) == [refs[0], refs[1], refs[2], refs[3], refs[5]]
        assert re.search(r'data-status="open"><span>open</span> <strong>4</strong>', page)
        assert re.search(r'data-status="resolved"><span>resolved</span> <strong>1</strong>', page)
        for css in ("due-overdue", "due-today", "due-soon", "due-ok", "due-nodue"):
            assert f'class="due {css}"' in page, css
        assert "overdue by 30 h" in page
        checks = {
            "?status=all": [refs[0], refs[1], refs[2], refs[4], refs[3], refs[5]],
            "?status=closed": [refs[4]],
            "?status=resolved": [refs[4]],
            "?tenant=jooptics": [refs[3]],
            "?type=access": [refs[1], refs[2]],
            "?channel=telegram": [refs[2]],
            "?assignee=111": [refs[1]],
            "?assignee=none&type=access": [refs[2]],
            "?overdue=true": [refs[0]],
            "?due_within=3": [refs[1], refs[2]],
            f"?q={refs[2].lower()}": [refs[2]],
            "?q=%2B92+300+0000001": [refs[1]],
        }
        for query, expected in checks.items():
            response, page = await browser.get("/admin/tickets" + query)
            assert response.status == 200, query
            assert _refs(page) == expected, query
        for bad in ("?status=bogus", "?due_within=-1", "?cursor=nonsense", "?q=hello", "?tenant=x"):
            response, page = await browser.get("/admin/tickets" + bad)
            assert response.status == 400, bad
            assert "must be" in page or "cursor" in page or "search by" in page, bad


async def test_the_list_pages_by_keyset(database_url: str, tmp_path: Path) -> None:
    made = await seed(database_url, [Seed(due_in=timedelta(hours=n)) for n in range(1, 121)])
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        seen: list[str] = []
        response, page = await browser.get("/admin/tickets")
        while True:
            seen.extend(_refs(page))
            found = re.search(r'rel="next" href="([^"]+)"', page)
            if not found:
                break
            response, page = await browser.get(
                "/admin/tickets" + found.group(1).replace("&amp;", "&")
            )
            assert response.status == 200 and "First page" in page
        assert seen == [t.ref for t in made]


async def test_ticket_page_shows_everything(database_url: str, tmp_path: Path) -> None:
    (ticket,) = await seed(
        database_url,
        [
            Seed(
                tenant="optimizory",
                email="ravi@example.com",
                extra_events=[
                    ("note", {"text": "Checked the CRM."}),
                    (
                        "attachment",
                        {
                            "files": [
                                {
                                    "ref": "f1",
                                    "name": "id-card.pdf",
                                    "content_type": "application/pdf",
                                }
                            ]
                        },
                    ),
                ],
            )
        ],
    )
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        response, page = await browser.post(
            f"/admin/tickets/{ticket.ref}/extend",
            {"reason": "We need the archive", "by": "10 days"},
        )
        assert response.status == 200 and "Deadline extended." in page
        for words in (
            "Checked the CRM.",
            "id-card.pdf",
            "We need the archive",
            "Deadline history",
            "extended",
            "ra***@example.com",
            "Seen by",
        ):
            assert words in page, words
        assert "ravi@example.com" not in page
        # The requester was told the new date and the reason, on WhatsApp.
        sent = await eventually(lambda: desk.svc.twilio.sent_messages(to="whatsapp:+923000000000"))
        assert "We need the archive" in sent[-1].params["Body"]


async def test_admin_actions_change_the_ticket_and_tell_the_requester(
    database_url: str, tmp_path: Path
) -> None:
    first, second = await seed(
        database_url,
        [
            Seed(tenant="jooptics", address="whatsapp:+962790000001"),
            Seed(tenant="jooptics", address="whatsapp:+962790000002"),
        ],
    )
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        base = f"/admin/tickets/{first.ref}"
        response, page = await browser.post(
            base + "/assign", {"assignee_user_id": "111", "assignee_name": "Lina"}
        )
        assert "Assignment saved." in page
        response, page = await browser.post(base + "/assign", {"assignee_user_id": "999"})
        assert response.status == 409 and "not one of" in page
        response, page = await browser.post(base + "/note", {"text": "Called the branch."})
        assert "Note added." in page and "Called the branch." in page
        response, page = await browser.post(base + "/note", {"text": "   "})
        assert response.status == 409
        response, page = await browser.post(base + "/extend", {"reason": "more time"})
        assert response.status == 409 and "allows no extension" in page
        response, page = await browser.post(base + "/resolve", {"note": "sent the copy by mail"})
        assert "Ticket resolved" in page
        response, page = await browser.post(base + "/reject", {"reason": "too late"})
        assert response.status == 409 and "already resolved" in page
        other = f"/admin/tickets/{second.ref}"
        response, page = await browser.post(other + "/reject", {"reason": ""})
        assert response.status == 409
        response, page = await browser.post(
            other + "/reject", {"reason": "We hold no data about you."}
        )
        assert "Ticket rejected" in page
        response, _ = await browser.post(base + "/bogus", {})
        assert response.status == 404
    one, two = sorted(await rows(database_url, Ticket), key=lambda t: t.id or 0)
    assert one.status == TicketStatus.RESOLVED and one.closed_at is not None
    assigned = [e for e in await events_of_ref(database_url, first.ref) if e.kind == "assigned"]
    assert assigned[0].data == {
        "assignee": 111,
        "assignee_name": "Lina",
        "from": None,
        "status": "in_progress",
    }
    assert one.assignee_user_id == 111 and one.assignee_name == "Lina"
    assert two.status == TicketStatus.REJECTED
    kinds = [e.kind for e in await events_of_ref(database_url, first.ref)]
    assert kinds == ["created", "assigned", "note", "resolved"]
    events = await events_of_ref(database_url, second.ref)
    assert (
        events[-1].actor.startswith("admin:")
        and events[-1].data["reason"] == "We hold no data about you."
    )
    queued = await rows(database_url, OutboundMessage)
    told = {m.recipient: m.payload["text"] for m in queued if m.recipient.startswith("whatsapp:")}
    # The staff desk heard of the changes too (its cards live in the tenant's staff chat).
    assert any(m.channel == "telegram" and m.recipient == "-1000000000002" for m in queued)
    assert "has been completed" in told["whatsapp:+962790000001"]
    rejected = told["whatsapp:+962790000002"]
    assert "We hold no data about you." in rejected and "Personal Data Protection Unit" in rejected
    assert "has been completed" in told["whatsapp:+962790000001"]
    assert "sent the copy by mail" in told["whatsapp:+962790000001"]  # the note goes along


async def test_csv_export_has_the_7101_record(database_url: str, tmp_path: Path) -> None:
    made = await seed(
        database_url,
        [
            Seed(
                kind="erasure",
                status=TicketStatus.REJECTED,
                closed_ago=timedelta(days=1),
                reject_reason="=cmd|' /C calc'!A0",
            ),
            Seed(kind="access", status=TicketStatus.RESOLVED, closed_ago=timedelta(hours=12)),
            Seed(kind="access"),
            Seed(kind="access", tenant="jooptics"),
        ],
    )
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        response, body = await browser.get("/admin/tickets.csv?status=all&tenant=optician-dynamics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/csv")
        assert "attachment" in response.headers["Content-Disposition"]
        table = list(csv.DictReader(io.StringIO(body)))
        assert [r["reference"] for r in table] == [made[0].ref, made[1].ref, made[2].ref]
        denied = table[0]
        assert denied["response"] == "denied" and denied["request_type"] == "erasure"
        assert denied["denial_reason"].startswith("'=")  # never a live spreadsheet formula
        assert denied["channel"] == "whatsapp" and denied["request_date"].endswith("+05:00")
        assert table[1]["response"] == "complied" and table[1]["response_date"]
        assert table[2]["response"] == "pending" and table[2]["response_date"] == ""
        assert "whatsapp:+" not in body  # no contacts in the record
    audit = [a for a in await rows(database_url, AdminAudit) if a.action == "export_csv"]
    assert len(audit) == 1 and audit[0].detail["tenant"] == "optician-dynamics"


async def test_yearly_report_page_and_csv(database_url: str, tmp_path: Path) -> None:
    year = (await seed(database_url, [Seed(received_ago=timedelta(0))]))[0].received_at.year
    await seed(
        database_url,
        [
            Seed(
                kind="access",
                status=TicketStatus.RESOLVED,
                received_ago=timedelta(days=4),
                closed_ago=timedelta(days=2),
            ),
            Seed(
                kind="access",
                status=TicketStatus.RESOLVED,
                received_ago=timedelta(days=10),
                closed_ago=timedelta(days=4),
            ),
            Seed(
                kind="access",
                status=TicketStatus.REJECTED,
                received_ago=timedelta(days=3),
                closed_ago=timedelta(days=2),
            ),
            Seed(
                kind="erasure",
                status=TicketStatus.CANCELLED,
                received_ago=timedelta(days=3),
                closed_ago=timedelta(days=2),
            ),
        ],
    )
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        response, page = await browser.get(f"/admin/reports?year={year}")
        assert response.status == 200 and "§7102" in page
        response, body = await browser.get(f"/admin/reports.csv?year={year}")
        table = {r["request_type"]: r for r in csv.DictReader(io.StringIO(body))}
        access = table["access"]
        # Received 4 (1 open + 2 resolved + 1 rejected); days to respond 2, 6 and 1.
        assert (access["received"], access["complied"], access["denied"]) == ("4", "2", "1")
        assert access["median_days_to_respond"] == "2.0"
        assert access["mean_days_to_respond"] == "3.0"
        assert table["erasure"]["withdrawn"] == "1"
        assert table["all"]["received"] == "5"
        response, _ = await browser.get("/admin/reports?year=abc")
        assert response.status == 400


async def test_charts_are_inline_svg(database_url: str, tmp_path: Path) -> None:
    await seed(
        database_url,
        [
            Seed(due_in=timedelta(hours=-2)),
            Seed(due_in=timedelta(days=2)),
            Seed(
                status=TicketStatus.RESOLVED, closed_ago=timedelta(days=1), due_in=timedelta(days=1)
            ),
        ],
    )
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        response, page = await browser.get("/admin/charts")
        assert response.status == 200
        assert page.count("<svg") == 3
        for title in ("opened and closed per week", "on time, per month", "by time left"):
            assert title in page
        assert 'data-value="1"' in page
        response, _ = await browser.get("/admin/charts?tenant=jooptics")
        assert response.status == 200


CONVERSATION = [
    # (minutes ago, who, text): stored out of this order, shown in it.
    (50, "customer", "Hello, I want <b>all</b> my data & the logs"),
    (40, "bot", 'Which request? Reply "1" for access'),
    (30, "customer", "1 <script>alert('x')</script>"),
    (20, "staff", "Staff: check <i>branch</i> records"),
    (10, "bot", "Your request is filed & we answer soon"),
]


async def _converse(database_url: str, ticket: Ticket, address: str, now: datetime) -> None:
    """The messages of CONVERSATION, straight in storage: inbound already processed and
    outbound already sent, so the running workers leave them alone."""
    engine = create_engine(database_url)
    try:
        async with transaction(session_factory(engine)) as session:
            for n, (ago, who, text) in enumerate(reversed(CONVERSATION)):
                at = now - timedelta(minutes=ago)
                if who == "customer":
                    session.add(
                        InboundMessage(
                            channel="whatsapp",
                            provider_id=f"SM{n:032d}",
                            tenant=ticket.tenant,
                            sender_index=crypto.blind_index(address),
                            payload={"Body": text, "NumMedia": "0"},
                            received_at=at,
                            processed_at=at,
                        )
                    )
                    continue
                staff = who == "staff"
                session.add(
                    OutboundMessage(
                        channel="telegram" if staff else "whatsapp",
                        tenant=ticket.tenant,
                        recipient="-1000000000001" if staff else address,
                        payload={"text": text},
                        status="sent",
                        ticket_id=ticket.id,
                        created_at=at,
                        next_attempt_at=at,
                        sent_at=at,
                    )
                )
    finally:
        await engine.dispose()


async def test_the_conversation_is_shown_in_order_and_escaped(
    database_url: str, tmp_path: Path
) -> None:
    address = "whatsapp:+923001112233"
    now = utcnow()
    (ticket,) = await seed(database_url, [Seed(address=address)], now=now)
    await _converse(database_url, ticket, address, now)
    async with admin_desk(database_url, tmp_path) as desk, desk.browser() as browser:
        response, page = await browser.get(f"/admin/tickets/{ticket.ref}")
        assert response.status == 200
    section = page.split("<h2>Conversation</h2>", 1)[1].split("</section>", 1)[0]
    texts = re.findall(r'<div class="text" dir="auto">(.*?)</div>', section, flags=re.S)
    assert texts == [
        "Hello, I want &lt;b&gt;all&lt;/b&gt; my data &amp; the logs",
        "Which request? Reply &#34;1&#34; for access",
        "1 &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;",
        "Staff: check &lt;i&gt;branch&lt;/i&gt; records",
        "Your request is filed &amp; we answer soon",
    ]
    whos = re.findall(r'<li class="msg from-(\w+)">', section)
    assert whos == [who for _, who, _ in CONVERSATION]
    assert "<script>" not in page and "<b>all</b>" not in page


async def _keep_file(database_url: str, ticket: Ticket, name: str, data: bytes) -> int:
    """A file kept with the ticket, sealed as the desk seals it, and its history line."""
    engine = create_engine(database_url)
    try:
        async with transaction(session_factory(engine)) as session:
            owner = await session.get(Ticket, ticket.id)
            assert owner is not None and owner.id is not None
            seal_id = secrets.token_hex(16)
            stored = DeskFile(
                ticket_id=owner.id,
                tenant=owner.tenant,
                seal_id=seal_id,
                name=name,
                content_type="application/pdf",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                sealed=crypto.keyring().seal_bytes(data, context=file_context(owner.id, seal_id)),
            )
            session.add(stored)
            await session.flush()
            assert stored.id is not None
            await add_event(
                session,
                owner,
                actor="staff:111",
                kind="staff_reply",
                at=utcnow(),
                data={"files": [{"file": stored.id, "name": name}]},
            )
            return stored.id
    finally:
        await engine.dispose()


async def test_admins_download_a_tickets_files(database_url: str, tmp_path: Path) -> None:
    mine, other = await seed(database_url, [Seed(), Seed()])
    data = b"%PDF-1.7\n\x00\xff\xfe binary, not text\n"
    file_id = await _keep_file(database_url, mine, 'copy "final"\r\nX-Evil: 1.pdf', data)
    other_id = await _keep_file(database_url, other, "other.pdf", b"someone else's file")
    path = f"/admin/tickets/{mine.ref}/files/{file_id}"
    async with admin_desk(database_url, tmp_path) as desk:
        anonymous = await desk.svc.http.get(desk.url + path, allow_redirects=False)
        assert anonymous.status == 302
        assert anonymous.headers["Location"].startswith("/admin/login?next=")
        assert data not in await anonymous.read()
        async with desk.browser() as browser:
            _, page = await browser.get(f"/admin/tickets/{mine.ref}")
            assert f'href="{path}"' in page  # the ticket page links to it
            response = await browser.http.get(desk.url + path)
            assert response.status == 200
            assert await response.read() == data
            disposition = response.headers["Content-Disposition"]
            assert disposition == 'attachment; filename="copy _final___X-Evil_ 1.pdf"'
            assert response.content_type == "application/octet-stream"
            assert "X-Evil" not in response.headers
            assert response.headers["X-Original-Content-Type"] == "application/pdf"
            # Another ticket's file through this ticket's address: no such file.
            for wrong in (
                f"/admin/tickets/{mine.ref}/files/{other_id}",
                f"/admin/tickets/{mine.ref}/files/{other_id + 100}",
                f"/admin/tickets/{mine.ref}/files/x1",
                f"/admin/tickets/{other.ref}/files/{file_id}",
            ):
                response = await browser.http.get(desk.url + wrong)
                assert response.status == 404, wrong
                body = await response.read()
                assert data not in body and b"someone else" not in body, wrong
        # README: downloaded "by admins only"; a viewer sees the name, not the file.
        async with desk.browser(VIEWER) as viewer:
            _, page = await viewer.get(f"/admin/tickets/{mine.ref}")
            assert "copy &#34;final&#34;" in page and f'href="{path}"' not in page
            response = await viewer.http.get(desk.url + path)
            assert response.status == 403
            assert data not in await response.read()
    downloads = [a for a in await rows(database_url, AdminAudit) if a.action == "download_file"]
    assert [(a.ticket_id, a.detail) for a in downloads] == [(mine.id, {"file": file_id})]
