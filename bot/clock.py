"""The legal clock: durations in the tenant-file syntax and the deadlines they give.

Pure arithmetic, no I/O: every function takes the moments it needs (never reads the time),
wants timezone-aware datetimes and answers in UTC. Days are the tenant's local days, and
working days come from the `holidays` package via `BusinessCalendar`.
"""

from __future__ import annotations

import re
from calendar import monthrange
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays


class Unit(StrEnum):
    IMMEDIATE = "immediate"
    SECONDS = "seconds"
    MINUTES = "minutes"
    HOURS = "hours"
    DAYS = "days"
    BUSINESS_DAYS = "business days"
    MONTHS = "months"


_SINGULAR = {
    "second": Unit.SECONDS,
    "minute": Unit.MINUTES,
    "hour": Unit.HOURS,
    "day": Unit.DAYS,
    "business day": Unit.BUSINESS_DAYS,
    "month": Unit.MONTHS,
}
_PATTERN = re.compile(r"^\s*(\d{1,6})\s+(business\s+day|second|minute|hour|day|month)s?\s*$")


@dataclass(frozen=True, slots=True)
class Duration:
    """An amount of one unit, as written in a tenant file ("7 business days")."""

    amount: int
    unit: Unit

    @property
    def is_immediate(self) -> bool:
        return self.unit is Unit.IMMEDIATE

    def __str__(self) -> str:
        if self.unit is Unit.IMMEDIATE:
            return "immediate"
        word = str(self.unit)
        return f"{self.amount} {word[:-1] if self.amount == 1 else word}"


IMMEDIATE = Duration(0, Unit.IMMEDIATE)


def parse_duration(text: str) -> Duration:
    """Parse `immediate` or `N seconds|minutes|hours|days|business days|months`."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string, got {type(text).__name__}")
    if text.strip().lower() == "immediate":
        return IMMEDIATE
    match = _PATTERN.match(text.lower())
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: use 'immediate' or "
            "'N seconds|minutes|hours|days|business days|months'"
        )
    amount = int(match.group(1))
    if amount == 0:
        raise ValueError(f"{text!r}: a duration must be positive (or 'immediate')")
    unit = _SINGULAR[re.sub(r"\s+", " ", match.group(2))]
    return Duration(amount, unit)


_ONE_SECOND = timedelta(seconds=1)
_MAX_NON_BUSINESS_RUN = 400  # no real calendar has a year without a working day
_ELAPSED = {
    Unit.SECONDS: timedelta(seconds=1),
    Unit.MINUTES: timedelta(minutes=1),
    Unit.HOURS: timedelta(hours=1),
}


class BusinessCalendar:
    """Working days of one country (or subdivision) as seen from the tenant's time zone.

    Weekends and public holidays come from the `holidays` package, loaded one year at a
    time on first use. The weekend is the package's own, decided per date: the UAE moved
    from Fri-Sat to Sat-Sun on 1 Jan 2022 (`holidays` models this in `AE._get_weekend`),
    Saudi Arabia from Thu-Fri to Fri-Sat on 28 Jun 2013, Jordan on 6 Jan 2000. Islamic
    holidays beyond the package's confirmed tables are its estimates.
    """

    __slots__ = ("_business", "_country", "_subdiv", "_tz", "_years")

    def __init__(self, country: str, tz: ZoneInfo | str, subdiv: str | None = None) -> None:
        try:
            holidays.country_holidays(country, subdiv=subdiv, years=[], expand=False)
        except NotImplementedError as exc:
            raise ValueError(f"unknown holiday calendar {country!r}/{subdiv!r}: {exc}") from exc
        if isinstance(tz, str):
            try:
                tz = ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {tz!r}") from exc
        self._country = country
        self._subdiv = subdiv
        self._tz = tz
        self._years: dict[int, holidays.HolidayBase] = {}
        self._business: dict[date, bool] = {}  # answers so far: a scheduler pass asks often

    def __repr__(self) -> str:
        subdiv = f", subdiv={self._subdiv!r}" if self._subdiv else ""
        return f"BusinessCalendar({self._country!r}, {self._tz.key!r}{subdiv})"

    @property
    def country(self) -> str:
        return self._country

    @property
    def subdiv(self) -> str | None:
        return self._subdiv

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    def _year(self, year: int) -> holidays.HolidayBase:
        # expand=False: each object answers only for its own year, which is all we ask it.
        # The package files an observed day under the year it falls in (US: New Year's Day
        # 2022, a Saturday, is observed on Fri 2021-12-31 in the 2021 object).
        found = self._years.get(year)
        if found is None:
            found = holidays.country_holidays(
                self._country, subdiv=self._subdiv, years=year, expand=False
            )
            self._years[year] = found
        return found

    def is_business_day(self, day: date) -> bool:
        """Whether `day` is neither a weekend day nor a public holiday."""
        if isinstance(day, datetime):
            raise TypeError("pass a local date, not a datetime (use local_date())")
        known = self._business.get(day)
        if known is None:
            known = self._business[day] = bool(self._year(day.year).is_working_day(day))
        return known

    def next_business_day(self, day: date) -> date:
        """The first business day strictly after `day`."""
        return self.add_business_days(day, 1)

    def roll_forward(self, day: date) -> date:
        """`day` itself if it is a business day, else the next business day."""
        return day if self.is_business_day(day) else self.next_business_day(day)

    def add_business_days(self, day: date, n: int) -> date:
        """The `n`th business day after `day` (before it if `n` < 0); `day` itself never counts."""
        step = timedelta(days=1 if n >= 0 else -1)
        for _ in range(abs(n)):
            for _ in range(_MAX_NON_BUSINESS_RUN):
                day += step
                if self.is_business_day(day):
                    break
            else:
                raise ValueError(f"{self!r} has no business day near {day}")
        return day

    def local_date(self, moment: datetime) -> date:
        """The date on the tenant's wall calendar at an aware `moment`."""
        return _aware(moment, "moment").astimezone(self._tz).date()

    def start_of_day(self, day: date) -> datetime:
        """The first instant (UTC) of local `day`; a midnight lost to DST maps to its instant."""
        return datetime.combine(day, time(0), tzinfo=self._tz).astimezone(UTC)

    def end_of_day(self, day: date) -> datetime:
        """The last second (UTC) of local `day`: 23:59:59 wall time whatever the offset."""
        return self.start_of_day(day + timedelta(days=1)) - _ONE_SECOND


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment


def _business_time(calendar: BusinessCalendar, start: datetime, end: datetime) -> timedelta:
    """Real time between two instants that falls on local business days."""
    total = timedelta(0)
    day = calendar.local_date(start)
    while (day_start := calendar.start_of_day(day)) < end:
        next_start = calendar.start_of_day(day + timedelta(days=1))
        if calendar.is_business_day(day):
            total += max(timedelta(0), min(end, next_start) - max(start, day_start))
        day += timedelta(days=1)
    return total


def _advance_business_time(
    calendar: BusinessCalendar, moment: datetime, amount: timedelta
) -> datetime:
    """The instant at which `amount` of business-day time has passed since `moment`."""
    day = calendar.local_date(moment)
    while amount > timedelta(0):
        next_start = calendar.start_of_day(day + timedelta(days=1))
        if calendar.is_business_day(day):
            if amount <= next_start - moment:
                return moment + amount
            amount -= next_start - moment
        moment = next_start
        day += timedelta(days=1)
    return moment


def _add_months(day: date, months: int) -> date:
    """Same day-of-month `months` later, or that month's last day if it is shorter."""
    year, month0 = divmod(day.month - 1 + months, 12)
    year += day.year
    return date(year, month0 + 1, min(day.day, monthrange(year, month0 + 1)[1]))


def add_duration(start: datetime, duration: Duration, calendar: BusinessCalendar) -> datetime:
    """When a clock of `duration` that starts at aware `start` runs out (aware UTC).

    - immediate: `start` itself.
    - seconds, minutes, hours: exactly that much real elapsed time; DST changes the wall
      clock, not the length (4 hours across a DST switch are 4 real hours).
    - days: calendar days counted from the day after the clock starts, ending at 23:59:59
      local time on the Nth day (the Regulation 1182/71 / ICO way of counting: the start
      day is not counted and a period ends at the end of its last day). Not moved off
      weekends or holidays: use business days or months for periods that should be.
    - business days: 23:59:59 local time on the Nth business day after the day the clock
      starts; the start day never counts, whether or not it is a business day.
    - months: the ICO rule (ICO guidance "Time limits for responding to data protection
      rights requests"): "calculate the time limit from the day you receive the request
      ... until the corresponding calendar date in the next month"; "if ... there is no
      corresponding calendar date, the date for response is the last day of the following
      month"; "if the corresponding date falls on a weekend or a public holiday, you have
      until the next working day to respond". N months applies the rule with N months;
      the period ends at 23:59:59 local time of that day.
    """
    start = _aware(start, "start").astimezone(UTC)
    return _settle(_unsettled_due(start, duration, calendar), duration.unit, calendar)


def _unsettled_due(start: datetime, duration: Duration, calendar: BusinessCalendar) -> datetime:
    """The deadline before any roll to a working day: months end on the corresponding date."""
    if duration.amount < 0:
        raise ValueError(f"negative duration {duration.amount} {duration.unit}")
    unit = duration.unit
    if unit is Unit.IMMEDIATE:
        return start
    if unit in _ELAPSED:
        return start + _ELAPSED[unit] * duration.amount
    first = calendar.local_date(start)
    if unit is Unit.DAYS:
        return calendar.end_of_day(first + timedelta(days=duration.amount))
    if unit is Unit.BUSINESS_DAYS:
        return calendar.end_of_day(calendar.add_business_days(first, duration.amount))
    if unit is Unit.MONTHS:
        return calendar.end_of_day(_add_months(first, duration.amount))
    raise ValueError(f"unsupported unit {unit!r}")  # pragma: no cover - Unit is closed


def _settle(moment: datetime, unit: Unit, calendar: BusinessCalendar) -> datetime:
    """Round a deadline to what its unit allows: the end of a (business) day for day units."""
    if unit is Unit.DAYS:
        return calendar.end_of_day(calendar.local_date(moment))
    if unit in (Unit.BUSINESS_DAYS, Unit.MONTHS):
        return calendar.end_of_day(calendar.roll_forward(calendar.local_date(moment)))
    return moment


def _merged_pauses(
    started_at: datetime, pauses: Sequence[tuple[datetime, datetime | None]]
) -> list[tuple[datetime, datetime | None]]:
    """Pauses clipped to the running clock, sorted, overlaps merged; None = still open."""
    clipped: list[tuple[datetime, datetime | None]] = []
    for begin, end in pauses:
        begin = _aware(begin, "pause start").astimezone(UTC)
        if end is not None:
            end = _aware(end, "pause end").astimezone(UTC)
            if end < begin:
                raise ValueError(f"pause ends {end.isoformat()} before it starts")
            if end <= started_at:
                continue
        clipped.append((max(begin, started_at), end))
    clipped.sort(key=lambda pause: pause[0])
    merged: list[tuple[datetime, datetime | None]] = []
    for begin, end in clipped:
        if merged:
            last_begin, last_end = merged[-1]
            if last_end is None:
                break  # an open pause swallows everything after it
            if begin <= last_end:
                merged[-1] = (last_begin, None if end is None else max(last_end, end))
                continue
        merged.append((begin, end))
    return merged


def due_with_pauses(
    started_at: datetime,
    duration: Duration,
    calendar: BusinessCalendar,
    pauses: Sequence[tuple[datetime, datetime | None]],
) -> datetime | None:
    """The deadline of a clock stopped during `pauses` (awaiting the requester), or None.

    The clock stops at a pause's start and resumes at its end with the time it had left,
    so the deadline moves later by the paused time, measured in the time the unit counts:
    real elapsed time for seconds/minutes/hours/days/months, and only time on local
    business days for business days (a pause from Friday noon to Monday noon gives back
    one business day, not three calendar days). A month deadline moves from its
    corresponding date, before the roll to a working day, so the roll is not counted twice;
    a pause that starts after that date, during the roll (or, for day units, after the
    moved deadline but before the end of its day), moves the deadline itself instead.
    Day-based deadlines then end at 23:59:59 local on the day the moved deadline lands on,
    rolled forward to the next business day for business days and months: any pause of a
    day-based clock, however short, moves it by at least one whole day.

    Pauses before `started_at` are clipped, overlapping pauses merged, and a pause that
    starts once the (moved) deadline has passed is ignored: the clock had already run out.
    An open pause (end None) that stops a still-running clock leaves no deadline: None.
    """
    started_at = _aware(started_at, "started_at").astimezone(UTC)
    moved = _unsettled_due(started_at, duration, calendar)
    due = _settle(moved, duration.unit, calendar)
    for begin, end in _merged_pauses(started_at, pauses):
        if begin >= due:
            break
        if end is None:
            return None
        if begin >= moved:
            moved = due  # stopped in the grace to the end of the (working) day: keep it all
        if duration.unit is Unit.BUSINESS_DAYS:
            moved = _advance_business_time(calendar, moved, _business_time(calendar, begin, end))
        else:
            moved += end - begin
        due = _settle(moved, duration.unit, calendar)
    return due


def extend(due_at: datetime, extension: Duration, calendar: BusinessCalendar) -> datetime:
    """The deadline after extending `due_at` by `extension`, counted from `due_at`'s day.

    Same rules as `add_duration` with the current deadline as the start: "2 months" on a
    deadline of 3 October ends on 3 December (ICO: "extend the time to respond by a
    further two months"); business days count from the day after the current deadline.
    """
    return add_duration(due_at, extension, calendar)


def max_extended_due(
    original_due: datetime, max_extension: Duration, calendar: BusinessCalendar
) -> datetime:
    """The latest deadline the law allows; extensions are checked as `new_due <= this`.

    Always measured from the original deadline, so successive extensions cannot creep
    past the maximum (two extensions of 1 month may end later than one of 2 months).
    """
    return extend(original_due, max_extension, calendar)


def time_left(due_at: datetime, now: datetime) -> timedelta:
    """Real time from `now` to `due_at`; negative once the deadline has passed."""
    return _aware(due_at, "due_at") - _aware(now, "now")
