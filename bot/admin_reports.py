"""Evidence for a regulator: the CSV of requests (CCPA regs §7101 record-keeping), the
yearly metrics (§7102), and the charts of the admin pages.

§7101(a) asks a business to keep, for 24 months, the date of each request, its nature,
the manner in which it was made, the date and nature of the response, and the basis for
any denial. §7102 asks for yearly numbers per request type: received, complied with in
whole or in part, denied, and the median or mean days to respond substantively.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.charts import AMBER, BLUE, GREEN, GREY, ORANGE, RED, Series, bar_chart
from bot.tenants import Tenants
from storage import admin_queries as q
from storage.enums import TicketStatus
from storage.models import Ticket, TicketEvent

CSV_COLUMNS = (
    "reference",
    "tenant",
    "request_date",
    "request_type",
    "channel",
    "status",
    "due_date",
    "extended",
    "extension_reason",
    "response_date",
    "response",
    "denial_reason",
    "days_to_respond",
)
OUTCOME = {
    TicketStatus.RESOLVED: "complied",
    TicketStatus.REJECTED: "denied",
    TicketStatus.CANCELLED: "withdrawn by requester",
    TicketStatus.EXPIRED: "closed: identity not verified",
}
METRIC_COLUMNS = (
    "request_type",
    "received",
    "complied",
    "denied",
    "withdrawn",
    "not_verified",
    "pending",
    "median_days_to_respond",
    "mean_days_to_respond",
)


def _iso(moment: datetime | None, tenants: Tenants, slug: str) -> str:
    if moment is None:
        return ""
    zone = tenants.by_slug(slug).zone if slug in tenants else UTC
    return moment.astimezone(zone).replace(microsecond=0).isoformat()


def _cell(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_line(values: Iterable[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow([_cell(v) for v in values])
    return buffer.getvalue()


def record_row(ticket: Ticket, events: list[TicketEvent], tenants: Tenants) -> list[object]:
    """One §7101 record: what was asked, how and when, and how and when it was answered."""
    extensions = [e for e in events if e.kind == "extended"]
    denial = next((e for e in reversed(events) if e.kind == "rejected"), None)
    days = (
        f"{(ticket.closed_at - ticket.received_at).total_seconds() / 86400:.1f}"
        if ticket.closed_at is not None
        else ""
    )
    return [
        ticket.ref,
        ticket.tenant,
        _iso(ticket.received_at, tenants, ticket.tenant),
        ticket.kind,
        ticket.channel,
        ticket.status,
        _iso(ticket.due_at, tenants, ticket.tenant),
        "yes" if extensions else "no",
        "; ".join(str(e.data.get("reason", "")) for e in extensions),
        _iso(ticket.closed_at, tenants, ticket.tenant),
        OUTCOME.get(TicketStatus(ticket.status), "pending"),
        str(denial.data.get("reason", "")) if denial is not None else "",
        days,
    ]


async def export_csv(
    session: AsyncSession, f: q.TicketFilter, tenants: Tenants, *, now: datetime
) -> AsyncIterator[str]:
    """The filtered list as §7101 records, a header line then one line per ticket."""
    yield csv_line(CSV_COLUMNS)
    async for batch in q.iter_tickets(session, f, now=now):
        ids = [t.id for t in batch if t.id is not None]
        events = await q.events_for(session, ids, ("extended", "rejected"))
        by_ticket: dict[int, list[TicketEvent]] = {}
        for event in events:
            by_ticket.setdefault(event.ticket_id, []).append(event)
        for ticket in batch:
            assert ticket.id is not None
            yield csv_line(record_row(ticket, by_ticket.get(ticket.id, []), tenants))


# --- yearly metrics -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class YearReport:
    year: int
    tenant: str | None
    rows: list[q.KindMetrics]
    total: q.KindMetrics


async def year_report(session: AsyncSession, *, year: int, tenant: str | None) -> YearReport:
    start = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    rows, overall = await q.year_metrics(session, start=start, end=end, tenant=tenant)
    return YearReport(year, tenant, rows, overall)


def _days(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def metric_values(row: q.KindMetrics) -> list[object]:
    return [
        row.kind,
        row.received,
        row.complied,
        row.denied,
        row.withdrawn,
        row.expired,
        row.pending,
        _days(row.median_days),
        _days(row.mean_days),
    ]


def report_csv(report: YearReport) -> str:
    lines = [csv_line(METRIC_COLUMNS)]
    lines.extend(csv_line(metric_values(row)) for row in report.rows)
    lines.append(csv_line(metric_values(report.total)))
    return "".join(lines)


# --- charts -----------------------------------------------------------------------------------

WEEKS = 12
MONTHS = 12
DAYS_LEFT = (
    ("overdue", None, 0, RED),
    ("< 1 day", 0, 1, ORANGE),
    ("1–3 days", 1, 3, AMBER),
    ("3–7 days", 3, 7, BLUE),
    ("7–14 days", 7, 14, GREEN),
    ("14–30 days", 14, 30, GREEN),
    ("> 30 days", 30, None, GREEN),
)
FAR = timedelta(days=365 * 100)


@dataclass(frozen=True, slots=True)
class Chart:
    """An SVG and the numbers behind it, for the table beside it."""

    title: str
    svg: str
    labels: list[str]
    rows: list[tuple[str, list[str]]]


def week_starts(now: datetime, weeks: int = WEEKS) -> list[datetime]:
    """Monday 00:00 UTC of the last `weeks` weeks (this one included), and the next Monday."""
    today = now.astimezone(UTC).date()
    monday = today - timedelta(days=today.weekday())
    first = monday - timedelta(weeks=weeks - 1)
    return [
        datetime.combine(first + timedelta(weeks=i), datetime.min.time(), UTC)
        for i in range(weeks + 1)
    ]


def month_starts(now: datetime, months: int = MONTHS) -> list[datetime]:
    """The first of each of the last `months` months (this one included), and of the next."""
    today = now.astimezone(UTC).date()
    index = today.year * 12 + today.month - 1 - (months - 1)
    out = []
    for i in range(months + 1):
        year, month0 = divmod(index + i, 12)
        out.append(datetime.combine(date(year, month0 + 1, 1), datetime.min.time(), UTC))
    return out


async def charts(session: AsyncSession, *, now: datetime, tenant: str | None) -> list[Chart]:
    return [
        await opened_closed_chart(session, now=now, tenant=tenant),
        await on_time_chart(session, now=now, tenant=tenant),
        await days_left_chart(session, now=now, tenant=tenant),
    ]


async def opened_closed_chart(session: AsyncSession, *, now: datetime, tenant: str | None) -> Chart:
    edges = week_starts(now)
    opened = await q.bucket_counts(session, "received_at", edges, tenant=tenant)
    closed = await q.bucket_counts(session, "closed_at", edges, tenant=tenant)
    labels = [e.strftime("%d %b") for e in edges[:-1]]
    title = "Tickets opened and closed per week"
    svg = bar_chart(
        title,
        labels,
        [Series("opened", opened, BLUE), Series("closed", closed, GREEN)],
        description=f"Weeks starting Monday (UTC), the last {WEEKS}.",
        chart_id="opened-closed",
    )
    rows = [("opened", [str(v) for v in opened]), ("closed", [str(v) for v in closed])]
    return Chart(title, svg, labels, rows)


async def on_time_chart(session: AsyncSession, *, now: datetime, tenant: str | None) -> Chart:
    edges = month_starts(now)
    counts = await q.on_time_counts(session, edges, tenant=tenant)
    rates = [100.0 * good / total if total else 0.0 for total, good in counts]
    labels = [e.strftime("%b %y") for e in edges[:-1]]
    colours = [
        GREEN if r >= 95 else AMBER if r >= 80 else RED if t else GREY
        for r, (t, _) in zip(rates, counts, strict=True)
    ]
    title = "Answered on time, per month"
    svg = bar_chart(
        title,
        labels,
        [Series("on time", rates, colours)],
        description="Share of requests resolved or rejected by their deadline, by month closed.",
        maximum=100,
        suffix="%",
        chart_id="on-time",
    )
    rows = [
        ("on time", [f"{r:.0f}%" if t else "–" for r, (t, _) in zip(rates, counts, strict=True)]),
        ("answered", [str(t) for t, _ in counts]),
    ]
    return Chart(title, svg, labels, rows)


async def days_left_chart(session: AsyncSession, *, now: datetime, tenant: str | None) -> Chart:
    edges = [now - FAR, *(now + timedelta(days=d) for _, _, d, _ in DAYS_LEFT[:-1]), now + FAR]
    values, undated = await q.open_by_days_left(session, edges, tenant=tenant)
    labels = [label for label, *_ in DAYS_LEFT] + ["no deadline yet"]
    values = [*values, undated]
    colours = [colour for *_, colour in DAYS_LEFT] + [GREY]
    title = "Open tickets by time left"
    svg = bar_chart(
        title,
        labels,
        [Series("open tickets", values, colours)],
        description="Active tickets by how long until their deadline.",
        chart_id="days-left",
    )
    return Chart(title, svg, labels, [("open", [str(v) for v in values])])
