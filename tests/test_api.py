"""The JSON API as INTERFACE.md pins it: bearer tokens, the ticket list with filters and
an opaque cursor, one ticket, its events, the suppression list, reasons for bad input."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from storage.admin_models import AdminAudit
from storage.db import create_engine, session_factory
from storage.enums import TicketStatus
from storage.models import ApiToken
from tests.test_admin_support import Seed, admin_desk, rows, seed, set_values, writes_held

FIELDS = {"ref", "tenant", "type", "status", "channel", "received_at", "due_at", "assignee"}


async def test_requests_without_a_valid_token_get_401(database_url: str, tmp_path: Path) -> None:
    async with admin_desk(database_url, tmp_path) as desk:
        for path in (
            "/tickets",
            "/tickets/OD-2026-00001",
            "/tickets/OD-2026-00001/events",
            "/suppressions",
        ):
            for token in (None, "rd_not-a-token", ""):
                response = await desk.api(path, token=token)
                assert response.status == 401, (path, token)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await response.json())["error"]
            basic = await desk.svc.http.get(
                desk.url + "/api/v1" + path, headers={"Authorization": f"Basic {desk.token}"}
            )
            assert basic.status == 401
        # A revoked token stops working at once.
        from bot import accounts

        engine = create_engine(database_url)
        await accounts.revoke_token(session_factory(engine), name="crm")
        await engine.dispose()
        assert (await desk.api("/tickets")).status == 401
        # The OpenAPI document itself is public.
        assert (await desk.api("/openapi.json", token=None)).status == 200


async def test_a_token_is_checked_without_writing_and_its_use_kept_once_a_minute(
    database_url: str, tmp_path: Path
) -> None:
    async with admin_desk(database_url, tmp_path) as desk:
        assert (await desk.api("/tickets")).status == 200
        (token,) = await rows(database_url, ApiToken)
        assert token.last_used_at is not None
        # Within the minute nothing is written: requests are answered while another
        # process holds the writes (on SQLite each once waited for its one writer).
        async with writes_held(database_url):
            for _ in range(3):
                assert (await asyncio.wait_for(desk.api("/tickets"), 5)).status == 200
        assert (await rows(database_url, ApiToken))[0].last_used_at == token.last_used_at
        a_while_ago = token.last_used_at - timedelta(minutes=2)
        await set_values(database_url, ApiToken, last_used_at=a_while_ago)
        assert (await desk.api("/tickets")).status == 200
        used = (await rows(database_url, ApiToken))[0].last_used_at
        assert used is not None and used >= token.last_used_at


async def test_ticket_list_filters_and_pages(database_url: str, tmp_path: Path) -> None:
    made = await seed(
        database_url,
        [
            Seed(due_in=timedelta(hours=n), kind="access" if n % 2 else "erasure")
            for n in range(1, 8)
        ]
        + [
            Seed(tenant="jooptics", due_in=timedelta(hours=-3), assignee=111),
            Seed(status=TicketStatus.RESOLVED, closed_ago=timedelta(hours=1)),
        ],
    )
    async with admin_desk(database_url, tmp_path) as desk:
        response = await desk.api("/tickets?limit=3")
        assert response.status == 200 and response.content_type == "application/json"
        page = await response.json()
        assert set(page) == {"items", "next_cursor"} and len(page["items"]) == 3
        first = page["items"][0]
        assert set(first) >= FIELDS
        assert first["ref"] == made[7].ref and first["overdue"] is True
        assert first["assignee"] == "staff 111" and first["channel"] == "whatsapp"
        # ISO 8601 with the business's offset (Amman: +03:00).
        due = datetime.fromisoformat(first["due_at"])
        assert due.utcoffset() == timedelta(hours=3) and first["due_at"].endswith("+03:00")
        walked = [i["ref"] for i in page["items"]]
        cursor = page["next_cursor"]
        while cursor:
            page = await (await desk.api(f"/tickets?limit=3&cursor={cursor}")).json()
            walked += [i["ref"] for i in page["items"]]
            cursor = page["next_cursor"]
        assert sorted(walked) == sorted(t.ref for t in made) and len(walked) == len(made)
        checks = {
            "?tenant=jooptics": [made[7].ref],
            "?overdue=true": [made[7].ref],
            "?status=resolved": [made[8].ref],
            "?type=erasure&tenant=optician-dynamics": [made[1].ref, made[3].ref, made[5].ref],
        }
        for query, expected in checks.items():
            body = await (await desk.api("/tickets" + query)).json()
            assert [i["ref"] for i in body["items"]] == expected, query


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=201",
        "?limit=abc",
        "?limit=1.5",
        "?status=bogus",
        "?type=shopping",
        "?tenant=unknown",
        "?overdue=maybe",
        "?cursor=abc",
        "?cursor=c1.bm9wZQ",
        "?cursor=c1." + "A" * 300,
        "?colour=blue",
        "?status=open&status=resolved",
        "?tenant=%00",
    ],
)
async def test_bad_parameters_get_400_with_a_reason(
    database_url: str, tmp_path: Path, query: str
) -> None:
    async with admin_desk(database_url, tmp_path) as desk:
        response = await desk.api("/tickets" + query)
        assert response.status == 400, query
        assert (await response.json())["error"], query


async def test_one_ticket_its_events_and_404s(database_url: str, tmp_path: Path) -> None:
    (ticket,) = await seed(database_url, [Seed(extra_events=[("note", {"text": "looked at it"})])])
    async with admin_desk(database_url, tmp_path) as desk:
        body = await (await desk.api(f"/tickets/{ticket.ref}")).json()
        assert body["ref"] == ticket.ref and body["type"] == "access" and body["status"] == "open"
        lower = await desk.api(f"/tickets/{ticket.ref.lower()}")
        assert lower.status == 200
        events = await (await desk.api(f"/tickets/{ticket.ref}/events")).json()
        assert [e["kind"] for e in events["items"]] == ["created", "note"]
        assert events["items"][1]["data"] == {"text": "looked at it"}
        for missing in (
            "/tickets/OD-2026-99999",
            "/tickets/nonsense",
            "/tickets/OD-2026-99999/events",
            "/nowhere",
        ):
            response = await desk.api(missing)
            assert response.status == 404, missing
            assert (await response.json())["error"]
        response = await desk.svc.http.post(
            desk.url + "/api/v1/tickets", headers={"Authorization": f"Bearer {desk.token}"}
        )
        assert response.status == 405 and "GET" in response.headers["Allow"]
    audit = await rows(database_url, AdminAudit)
    assert {a.action for a in audit} == {"api_view_ticket", "api_view_events"}
    assert all(a.actor == "token:crm" for a in audit)


async def test_suppressions_list_opt_outs(database_url: str, tmp_path: Path) -> None:
    from storage import people
    from storage.db import transaction
    from storage.models import utcnow

    engine = create_engine(database_url)
    async with transaction(session_factory(engine)) as session:
        for n in range(5):
            await people.record_consent(
                session,
                tenant="optician-dynamics" if n < 4 else "jooptics",
                requester_id=None,
                channel="whatsapp",
                address=f"whatsapp:+92300000000{n}",
                category="marketing",
                granted=False,
                words="STOP",
                ticket_id=None,
                now=utcnow(),
            )
    await engine.dispose()
    async with admin_desk(database_url, tmp_path) as desk:
        page = await (await desk.api("/suppressions?limit=2&tenant=optician-dynamics")).json()
        seen = [i["address"] for i in page["items"]]
        while page["next_cursor"]:
            page = await (
                await desk.api(
                    f"/suppressions?limit=2&tenant=optician-dynamics&cursor={page['next_cursor']}"
                )
            ).json()
            seen += [i["address"] for i in page["items"]]
        assert seen == [f"whatsapp:+92300000000{n}" for n in range(4)]
        item = page["items"][0]
        assert item["category"] == "marketing" and item["channel"] == "whatsapp"
        assert item["created_at"].endswith("+05:00")
        assert (await desk.api("/suppressions?channel=fax")).status == 400
        jo = await (await desk.api("/suppressions?tenant=jooptics")).json()
        assert [i["address"] for i in jo["items"]] == ["whatsapp:+923000000004"]


async def test_openapi_document_describes_the_api(database_url: str, tmp_path: Path) -> None:
    async with admin_desk(database_url, tmp_path) as desk:
        doc = await (await desk.api("/openapi.json", token=None)).json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/tickets",
        "/tickets/{ref}",
        "/tickets/{ref}/events",
        "/suppressions",
    }
    ticket = doc["components"]["schemas"]["Ticket"]
    assert set(ticket["required"]) >= FIELDS
    params = {p["name"]: p for p in doc["paths"]["/tickets"]["get"]["parameters"]}
    assert set(params) == {"tenant", "status", "type", "overdue", "limit", "cursor"}
    assert params["tenant"]["schema"]["enum"] == ["jooptics", "optician-dynamics", "optimizory"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
