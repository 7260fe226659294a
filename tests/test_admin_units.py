"""Small pure pieces of the admin issue: SVG charts, cursors, masks, CSV cells, the
deadline history, the chart buckets; and migration 0004 going down and up again."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # our own output, not untrusted input
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.admin_reports import _cell, month_starts, week_starts
from bot.admin_service import due_history, mask_text
from bot.api_models import ParamError, decode_cursor, encode_cursor
from bot.charts import Series, bar_chart, nice_ceiling
from storage.admin_queries import Cursor
from storage.db import alembic_config, current_revision, migrate
from storage.models import Ticket, TicketEvent

SVG = "{http://www.w3.org/2000/svg}"


def test_bar_chart_is_well_formed_svg_with_proportional_bars() -> None:
    svg = bar_chart(
        'Opened & "closed" <per week>',
        ["W1", "W2", "W3"],
        [Series("opened", [0, 5, 10]), Series("closed", [2, 2, 2], "#000")],
    )
    root = ET.fromstring(svg)  # noqa: S314 (escaped titles: still XML)
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    assert root.find(f"{SVG}title").text == 'Opened & "closed" <per week>'  # type: ignore[union-attr]
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]
    assert len(bars) == 6
    heights = {float(b.get("data-value", "0")): float(b.get("height", "0")) for b in bars}
    assert heights[0] == 0 and heights[10] == pytest.approx(2 * heights[5])
    assert "style=" not in svg and "<script" not in svg  # the CSP allows neither


def test_bar_chart_needs_one_value_per_label() -> None:
    with pytest.raises(ValueError):
        bar_chart("x", ["a", "b"], [Series("s", [1])])


@pytest.mark.parametrize(
    ("value", "top"), [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20), (24, 25), (240, 250), (0.3, 0.5)]
)
def test_axis_tops_are_round(value: float, top: float) -> None:
    assert nice_ceiling(value) == top


def test_cursors_round_trip_and_refuse_tampering() -> None:
    moment = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    for cursor in (Cursor(moment, 42), Cursor(None, 7)):
        assert decode_cursor(encode_cursor(cursor)) == cursor
    for bad in (
        "",
        "c1.",
        "c1.!!!",
        "c2.WzEsMl0",
        "c1.WzEsMl0",
        "c1.WyJ4IiwxXQ",
        "c1.W251bGwsLTFd",
    ):
        with pytest.raises(ParamError):
            decode_cursor(bad)


def test_free_text_masks_contacts_and_codes() -> None:
    text = "write to amina@example.com or +92 300 1234567, code 123456, ref OD-2026-00042"
    masked = mask_text(text)
    assert "amina@example.com" not in masked and "am***@example.com" in masked
    assert "1234567" not in masked and "123456" not in masked
    assert "OD-2026-00042" in masked


def test_csv_cells_never_start_a_formula() -> None:
    assert _cell("=1+1") == "'=1+1" and _cell("@SUM(A1)") == "'@SUM(A1)"
    assert _cell("-2") == "'-2" and _cell("plain") == "plain" and _cell(None) == ""


def test_deadline_history_lists_the_original_and_every_move() -> None:
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)
    first_due = datetime(2026, 2, 19, 18, 29, 59, tzinfo=UTC)
    later = first_due + timedelta(days=10)
    ticket = Ticket(
        id=1, tenant="optimizory", ref="OPT-2026-00001", year=2026, seq=1, kind="access",
        channel="whatsapp", clock_started_at=start, due_at=later, received_at=start,
    )  # fmt: skip
    events = [
        TicketEvent(ticket_id=1, actor="customer", kind="created", at=start, data={}),
        TicketEvent(
            ticket_id=1, actor="admin:1", kind="extended", at=start + timedelta(days=3),
            data={"reason": "archive", "from": first_due.isoformat(), "due_at": later.isoformat()},
        ),
    ]  # fmt: skip
    history = due_history(ticket, events)
    assert [(h.what, h.due_at, h.reason) for h in history] == [
        ("deadline set", first_due, None),
        ("extended", later, "archive"),
    ]


def test_chart_buckets_start_on_mondays_and_firsts() -> None:
    now = datetime(2026, 3, 12, 15, tzinfo=UTC)  # a Thursday
    weeks = week_starts(now, 4)
    assert len(weeks) == 5 and all(w.weekday() == 0 and w.hour == 0 for w in weeks)
    assert weeks[-2] <= now < weeks[-1]
    months = month_starts(now, 3)
    assert [m.strftime("%Y-%m-%d") for m in months] == [
        "2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01",
    ]  # fmt: skip
    assert month_starts(datetime(2026, 1, 20, tzinfo=UTC), 2)[0].strftime("%Y-%m") == "2025-12"


async def test_migration_0004_goes_down_and_up(engine: AsyncEngine) -> None:
    assert await current_revision(engine) is not None

    def downgrade(connection: sa.Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")

    async with engine.begin() as conn:
        await conn.run_sync(downgrade)
    assert await current_revision(engine) == "0003"
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        indexes = await conn.run_sync(
            lambda sync: [i["name"] for i in sa.inspect(sync).get_indexes("ticket")]
        )
    assert "admin_session" not in names and "sandbox_chat" not in names
    assert not [i for i in indexes if i and i.startswith("ix_admin_")]
    await migrate(engine, "head")
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    assert {
        "admin_session",
        "login_attempt",
        "admin_audit",
        "sandbox_chat",
        "webhook_relay",
    } <= set(names)
