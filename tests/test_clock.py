"""Deadline arithmetic of the legal clock: hand-computed cases and properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.clock import (
    IMMEDIATE,
    BusinessCalendar,
    Duration,
    Unit,
    add_duration,
    due_with_pauses,
    extend,
    max_extended_due,
    parse_duration,
    time_left,
)

ZONES = {
    "PK": "Asia/Karachi",
    "AE": "Asia/Dubai",
    "SA": "Asia/Riyadh",
    "JO": "Asia/Amman",
    "IN": "Asia/Kolkata",
    "GB": "Europe/London",
    "US": "America/New_York",
}
CALENDARS = {country: BusinessCalendar(country, zone) for country, zone in ZONES.items()}
GB_ENG = BusinessCalendar("GB", "Europe/London", subdiv="ENG")


def calendar_for(name: str) -> BusinessCalendar:
    return GB_ENG if name == "GB-ENG" else CALENDARS[name]


# Holidays as the `holidays` package (0.109) has them, read from it in a scratch script:
# SA 2025: Eid al-Fitr Mar 30-Apr 2; Arafah Jun 5, Eid al-Adha Jun 6-8, observed Jun 9-10.
# SA 2026: Founding Day Feb 22; Eid al-Fitr Mar 19-22, observed Mar 23-24; Arafah May 26,
#          Eid al-Adha May 27-29, observed Sun May 31. Weekend Fri-Sat.
# JO 2025: Dec 25. JO 2026: Jan 1; Eid al-Fitr Mar 20-22; Independence May 25; Arafah May 26,
#          Eid al-Adha May 27-29 (all Islamic dates "estimated"). Weekend Fri-Sat.
# AE 2021: Dec 1-3; Fri-Sat weekend until 2021-12-31. AE 2022+: Sat-Sun; Jan 1.
# AE 2025: National Day Dec 1-2. AE 2026: Eid al-Fitr Mar 19-22; Arafah May 26, Adha May 27-29.
# PK 2025: Eid al-Adha Jun 6-9; Quaid-e-Azam Day Dec 25. PK 2026: Eid al-Fitr Mar 20-21;
#          Pakistan Day Mar 23; Eid al-Adha May 26-28. Weekend Sat-Sun.
# IN 2025: Eid al-Fitr Mar 31; Mahavir Jayanti Apr 10; Ambedkar Apr 14; Diwali Oct 20.
# IN 2026: Ram Navami Mar 26; Mahavir Jayanti Mar 31; Good Friday Apr 3. Weekend Sat-Sun.
# GB (no subdivision: only UK-wide days, so no Easter Monday or August bank holiday!):
#          2025 Apr 18, Dec 25-26; 2026 Jan 1, May 4, Dec 25, Sat Dec 26 observed Mon Dec 28;
#          2027 Dec 25-26 observed Mon-Tue Dec 27-28; 2028 Jan 1 observed Mon Jan 3.
# GB-ENG adds Easter Monday (2025-04-21). US (federal): 2025 Thanksgiving Nov 27;
#          2026 Jan 1, Jul 3 (observed), Dec 25; 2027 Dec 24 and Dec 31 (both observed).
# DST: London Mar 29 / Oct 25 2026; New York Mar 8 / Nov 1 2026.
CASES = [
    # --- Saudi Arabia (Asia/Riyadh, +03:00, Fri-Sat weekend) ---
    # received Thu 2026-03-19 (first day of Eid al-Fitr); 20 Fri, 21 Sat, 22 Sun hol, 23-24
    # observed; business days: Wed 25 (1), Thu 26 (2), Sun 29 (3), Mon 30 (4), Tue 31 (5),
    # Wed Apr 1 (6), Thu Apr 2 (7) → 7th = Thu 2026-04-02
    ("SA", "2026-03-19T10:00:00+03:00", "7 business days", "2026-04-02T23:59:59+03:00"),
    # received Wed 2026-03-18; Thu 19 .. Tue 24 Eid or weekend → 1st = Wed 2026-03-25
    ("SA", "2026-03-18T09:00:00+03:00", "1 business day", "2026-03-25T23:59:59+03:00"),
    # received Mon 2026-05-25; Tue 26 Arafah, 27-29 Eid al-Adha, Sat 30 weekend, Sun 31
    # observed; Mon Jun 1 (1), Tue 2 (2), Wed 3 (3)
    ("SA", "2026-05-25T12:00:00+03:00", "3 business days", "2026-06-03T23:59:59+03:00"),
    # received Thu 2025-06-05 (Arafah); Fri 6 .. Tue 10 Eid/observed; Wed 11 (1), Thu 12 (2)
    ("SA", "2025-06-05T08:00:00+03:00", "2 business days", "2025-06-12T23:59:59+03:00"),
    # received Thu 2026-01-08 at 01:30 Riyadh (Wed 22:30 UTC: the local day counts);
    # Fri 9, Sat 10 weekend → Sun 11 (1)
    ("SA", "2026-01-07T22:30:00+00:00", "1 business day", "2026-01-11T23:59:59+03:00"),
    # ICO month: Sat 2026-02-21 → Sat 2026-03-21 (Eid, weekend); Sun 22 hol, Mon 23, Tue 24
    # observed → next working day Wed 2026-03-25
    ("SA", "2026-02-21T10:00:00+03:00", "1 month", "2026-03-25T23:59:59+03:00"),
    # elapsed time ignores the calendar: 48 hours from Thu 10:00 is Sat 10:00
    ("SA", "2026-03-19T10:00:00+03:00", "48 hours", "2026-03-21T10:00:00+03:00"),
    ("SA", "2026-03-19T10:00:00+03:00", "immediate", "2026-03-19T10:00:00+03:00"),
    # --- Jordan (Asia/Amman, +03:00, Fri-Sat weekend) ---
    # received Thu 2026-03-19; Fri 20 Eid, Sat 21, Sun 22 hol; Mon 23 (1), Tue 24 (2), Wed 25 (3)
    ("JO", "2026-03-19T10:00:00+03:00", "3 business days", "2026-03-25T23:59:59+03:00"),
    # received Sun 2026-05-24; Mon 25 Independence, Tue 26 .. Fri 29 Arafah/Eid, Sat 30
    # weekend; Sun 31 (1), Mon Jun 1 (2)
    ("JO", "2026-05-24T10:00:00+03:00", "2 business days", "2026-06-01T23:59:59+03:00"),
    # received Wed 2025-12-24; Thu 25 Christmas, Fri 26-Sat 27 weekend; Sun 28 (1), Mon 29 (2),
    # Tue 30 (3)
    ("JO", "2025-12-24T16:00:00+03:00", "3 business days", "2025-12-30T23:59:59+03:00"),
    # year end: received Tue 2025-12-30; Wed 31 (1), Thu Jan 1 hol, Fri 2-Sat 3; Sun 4 (2)
    ("JO", "2025-12-30T16:00:00+03:00", "2 business days", "2026-01-04T23:59:59+03:00"),
    # ICO month: Mon 2025-12-01 → Thu 2026-01-01 (holiday), Fri-Sat weekend → Sun 2026-01-04
    ("JO", "2025-12-01T10:00:00+03:00", "1 month", "2026-01-04T23:59:59+03:00"),
    # --- UAE (Asia/Dubai, +04:00; Sat-Sun weekend since 2022, Fri-Sat before) ---
    # received Wed 2026-03-18; Thu 19-Sun 22 Eid; Mon 23 (1), Tue 24 (2)
    ("AE", "2026-03-18T11:00:00+04:00", "2 business days", "2026-03-24T23:59:59+04:00"),
    # received Wed 2021-12-29; Thu 30 (1); Fri 31 weekend under the old Fri-Sat rule, Sat
    # Jan 1 holiday, Sun Jan 2 weekend under the new rule; Mon 2022-01-03 (2)
    ("AE", "2021-12-29T11:00:00+04:00", "2 business days", "2022-01-03T23:59:59+04:00"),
    # received Thu 2021-12-16; Fri 17-Sat 18 weekend (2021 rule); Sunday was a working day
    ("AE", "2021-12-16T11:00:00+04:00", "1 business day", "2021-12-19T23:59:59+04:00"),
    # received Thu 2025-11-27; Fri 28 (1), Sat-Sun, Mon Dec 1-Tue 2 National Day; Wed 3 (2),
    # Thu 4 (3)
    ("AE", "2025-11-27T11:00:00+04:00", "3 business days", "2025-12-04T23:59:59+04:00"),
    # calendar days do not roll: Sun 2026-03-15 + 5 days = Fri 2026-03-20 (Eid al-Fitr)
    ("AE", "2026-03-15T09:00:00+04:00", "5 days", "2026-03-20T23:59:59+04:00"),
    # ICO month: Mon 2026-04-27 → Wed 2026-05-27 (Eid al-Adha); Thu 28, Fri 29 Eid, Sat-Sun
    # weekend → Mon 2026-06-01
    ("AE", "2026-04-27T09:00:00+04:00", "1 month", "2026-06-01T23:59:59+04:00"),
    # --- Pakistan (Asia/Karachi, +05:00, Sat-Sun weekend per holidays) ---
    # received Thu 2026-03-19; Fri 20 Eid, Sat 21 Eid, Sun 22, Mon 23 Pakistan Day; Tue 24 (1),
    # Wed 25 (2), Thu 26 (3), Fri 27 (4), Mon 30 (5), Tue 31 (6), Wed Apr 1 (7)
    ("PK", "2026-03-19T14:00:00+05:00", "7 business days", "2026-04-01T23:59:59+05:00"),
    # received Fri 2025-05-30; Mon Jun 2 (1) .. Thu 5 (4), Fri 6-Mon 9 Eid al-Adha;
    # Tue 10 (5), Wed 11 (6), Thu 12 (7)
    ("PK", "2025-05-30T14:00:00+05:00", "7 business days", "2025-06-12T23:59:59+05:00"),
    # received Mon 2026-05-25; Tue 26-Thu 28 Eid al-Adha; Fri 29 (1), Mon Jun 1 (2), Tue 2 (3)
    ("PK", "2026-05-25T14:00:00+05:00", "3 business days", "2026-06-02T23:59:59+05:00"),
    # received Wed 2025-12-24; Thu 25 Quaid-e-Azam Day; Fri 26 (1), Mon 29 (2)
    ("PK", "2025-12-24T14:00:00+05:00", "2 business days", "2025-12-29T23:59:59+05:00"),
    # 19:30 UTC on Wed 24 is 00:30 Thu 25 in Karachi: the clock starts on the 25th → Fri 26
    ("PK", "2025-12-24T19:30:00+00:00", "1 business day", "2025-12-26T23:59:59+05:00"),
    # ICO month from 31 Jan: Sat 2026-01-31 → 28 Feb 2026 (Sat) → Mon 2026-03-02
    ("PK", "2026-01-31T10:00:00+05:00", "1 month", "2026-03-02T23:59:59+05:00"),
    # --- India (Asia/Kolkata, +05:30, Sat-Sun weekend) ---
    # received Wed 2026-03-25; Thu 26 Ram Navami; Fri 27 (1), Mon 30 (2), Tue 31 Mahavir
    # Jayanti; Wed Apr 1 (3), Thu 2 (4), Fri 3 Good Friday; Mon 6 (5)
    ("IN", "2026-03-25T10:00:00+05:30", "5 business days", "2026-04-06T23:59:59+05:30"),
    # received Fri 2025-03-28; Sat-Sun, Mon 31 Eid al-Fitr; Tue Apr 1 (1)
    ("IN", "2025-03-28T10:00:00+05:30", "1 business day", "2025-04-01T23:59:59+05:30"),
    # received Tue 2025-04-08; Wed 9 (1), Thu 10 hol, Fri 11 (2), Mon 14 hol, Tue 15 (3),
    # Wed 16 (4), Thu 17 (5)
    ("IN", "2025-04-08T10:00:00+05:30", "5 business days", "2025-04-17T23:59:59+05:30"),
    # 19:00 UTC Sun 19 Oct is 00:30 Mon 20 (Diwali) in Kolkata; next business day Tue 21
    ("IN", "2025-10-19T19:00:00+00:00", "1 business day", "2025-10-21T23:59:59+05:30"),
    # 45 calendar days over the year end: Fri 2026-11-20 + 10 = Nov 30, + 31 = Dec 31,
    # + 4 = Mon 2027-01-04
    ("IN", "2026-11-20T10:00:00+05:30", "45 days", "2027-01-04T23:59:59+05:30"),
    # --- United Kingdom (Europe/London) ---
    # ICO: Sat 2026-01-31 → 28 Feb 2026, a Saturday → Mon 2026-03-02
    ("GB", "2026-01-31T10:00:00+00:00", "1 month", "2026-03-02T23:59:59+00:00"),
    # ICO in a leap year: Mon 2028-01-31 → Tue 2028-02-29
    ("GB", "2028-01-31T10:00:00+00:00", "1 month", "2028-02-29T23:59:59+00:00"),
    # ICO: Sun 2025-11-30 → Tue 2025-12-30 (a working day)
    ("GB", "2025-11-30T10:00:00+00:00", "1 month", "2025-12-30T23:59:59+00:00"),
    # ICO: Wed 2026-11-25 → Fri 2026-12-25 Christmas; Sat 26 Boxing Day, Sun 27, Mon 28
    # Boxing Day observed → Tue 2026-12-29
    ("GB", "2026-11-25T10:00:00+00:00", "1 month", "2026-12-29T23:59:59+00:00"),
    # ICO, 3 months: 30 Nov 2025 → 30 Feb 2026 does not exist → Sat 28 Feb → Mon 2 Mar
    ("GB", "2025-11-30T10:00:00+00:00", "3 months", "2026-03-02T23:59:59+00:00"),
    # ICO: Tue 2026-03-31 → 31 Apr does not exist → Thu 2026-04-30 (BST)
    ("GB", "2026-03-31T10:00:00+01:00", "1 month", "2026-04-30T23:59:59+01:00"),
    # ICO, 12 months from a leap day: Thu 2024-02-29 → Fri 2025-02-28
    ("GB", "2024-02-29T10:00:00+00:00", "12 months", "2025-02-28T23:59:59+00:00"),
    # ICO: Sat 2026-04-04 → Mon 2026-05-04 May Day → Tue 2026-05-05
    ("GB", "2026-04-04T10:00:00+01:00", "1 month", "2026-05-05T23:59:59+01:00"),
    # received Thu 2025-12-18; Fri 19 (1), Mon 22 (2), Tue 23 (3), Wed 24 (4), Thu 25-Fri 26
    # Christmas/Boxing Day; Mon 29 (5)
    ("GB", "2025-12-18T10:00:00+00:00", "5 business days", "2025-12-29T23:59:59+00:00"),
    # year end: Tue 2025-12-30; Wed 31 (1), Thu Jan 1 hol, Fri 2 (2)
    ("GB", "2025-12-30T10:00:00+00:00", "2 business days", "2026-01-02T23:59:59+00:00"),
    # received Thu 2027-12-23; Fri 24 (1), Mon 27-Tue 28 observed; Wed 29 (2), Thu 30 (3)
    ("GB", "2027-12-23T10:00:00+00:00", "3 business days", "2027-12-30T23:59:59+00:00"),
    # received Fri 2027-12-31; Sat-Sun, Mon 2028-01-03 New Year observed → Tue 2028-01-04
    ("GB", "2027-12-31T10:00:00+00:00", "1 business day", "2028-01-04T23:59:59+00:00"),
    # the start day never counts, business day or not: Sat 2026-01-10 → Mon 12 (1)
    ("GB", "2026-01-10T10:00:00+00:00", "1 business day", "2026-01-12T23:59:59+00:00"),
    # DST starts Sun 2026-03-29 01:00 UTC: 00:30 GMT + 4 real hours = 04:30 UTC = 05:30 BST
    ("GB", "2026-03-29T00:30:00+00:00", "4 hours", "2026-03-29T05:30:00+01:00"),
    # DST ends Sun 2026-10-25 01:00 UTC: 00:30 BST (23:30 UTC) + 4 h = 03:30 UTC = 03:30 GMT
    ("GB", "2026-10-25T00:30:00+01:00", "4 hours", "2026-10-25T03:30:00+00:00"),
    # received Fri 2026-03-27 (GMT); Mon 30 (1) ends 23:59:59 BST = 22:59:59 UTC
    ("GB", "2026-03-27T10:00:00+00:00", "1 business day", "2026-03-30T23:59:59+01:00"),
    # GB without a subdivision has no Easter Monday: Thu 2025-04-17; Fri 18 Good Friday;
    # Mon 21 (1), Tue 22 (2)
    ("GB", "2025-04-17T10:00:00+01:00", "2 business days", "2025-04-22T23:59:59+01:00"),
    # England has it: Mon 21 Easter Monday; Tue 22 (1), Wed 23 (2)
    ("GB-ENG", "2025-04-17T10:00:00+01:00", "2 business days", "2025-04-23T23:59:59+01:00"),
    # --- United States (America/New_York, federal holidays) ---
    # DST starts Sun 2026-03-08 07:00 UTC: 00:30 EST (05:30 UTC) + 4 h = 09:30 UTC = 05:30 EDT
    ("US", "2026-03-08T00:30:00-05:00", "4 hours", "2026-03-08T05:30:00-04:00"),
    # DST ends Sun 2026-11-01 06:00 UTC: 00:30 EDT (04:30 UTC) + 4 h = 08:30 UTC = 03:30 EST
    ("US", "2026-11-01T00:30:00-04:00", "4 hours", "2026-11-01T03:30:00-05:00"),
    # 90 minutes across the 02:00 → 03:00 gap: 01:30 EST (06:30 UTC) → 08:00 UTC = 04:00 EDT
    ("US", "2026-03-08T01:30:00-05:00", "90 minutes", "2026-03-08T04:00:00-04:00"),
    # received Fri 2026-03-06 (EST); Mon 9 (1) ends 23:59:59 EDT
    ("US", "2026-03-06T16:00:00-05:00", "1 business day", "2026-03-09T23:59:59-04:00"),
    # received Wed 2025-11-26; Thu 27 Thanksgiving; Fri 28 (1), Mon Dec 1 (2)
    ("US", "2025-11-26T09:00:00-05:00", "2 business days", "2025-12-01T23:59:59-05:00"),
    # received Thu 2027-12-30; Fri 31 is New Year's Day 2028 observed; Mon 2028-01-03 (1)
    ("US", "2027-12-30T09:00:00-05:00", "1 business day", "2028-01-03T23:59:59-05:00"),
    # received Thu 2027-12-23; Fri 24 Christmas observed; Mon 27 (1), Tue 28 (2)
    ("US", "2027-12-23T09:00:00-05:00", "2 business days", "2027-12-28T23:59:59-05:00"),
    # received Thu 2026-07-02; Fri 3 Independence Day observed; Mon 6 (1)
    ("US", "2026-07-02T09:00:00-04:00", "1 business day", "2026-07-06T23:59:59-04:00"),
    # 45 calendar days: Tue 2026-11-17 + 13 = Nov 30, + 31 = Dec 31, + 1 = Fri 2027-01-01
    # (a holiday, but days do not roll)
    ("US", "2026-11-17T09:00:00-05:00", "45 days", "2027-01-01T23:59:59-05:00"),
    # 03:00 UTC Fri 2 Jan is 22:00 Thu 1 Jan (holiday) in New York; Fri 2 (1), not Mon 5
    ("US", "2026-01-02T03:00:00+00:00", "1 business day", "2026-01-02T23:59:59-05:00"),
]


@pytest.mark.parametrize(("country", "start", "duration", "expected"), CASES)
def test_add_duration(country: str, start: str, duration: str, expected: str) -> None:
    due = add_duration(
        datetime.fromisoformat(start), parse_duration(duration), calendar_for(country)
    )
    assert due == datetime.fromisoformat(expected)
    assert due.tzinfo is UTC
    assert due.isoformat() == datetime.fromisoformat(expected).astimezone(UTC).isoformat()


def test_case_table_is_large_and_covers_every_calendar() -> None:
    assert len(CASES) >= 40
    assert {case[0] for case in CASES} >= set(ZONES)


# --- BusinessCalendar ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "day", "expected"),
    [
        ("AE", date(2021, 12, 31), False),  # Friday: weekend until the end of 2021
        ("AE", date(2021, 12, 26), True),  # Sunday: a working day in 2021
        ("AE", date(2022, 1, 7), True),  # Friday: a working day from 2022
        ("AE", date(2022, 1, 9), False),  # Sunday: weekend from 2022
        ("SA", date(2026, 1, 9), False),  # Friday
        ("SA", date(2026, 1, 11), True),  # Sunday
        ("JO", date(2026, 1, 10), False),  # Saturday
        ("PK", date(2026, 1, 10), False),  # Saturday
        ("PK", date(2026, 1, 9), True),  # Friday
        ("IN", date(2026, 1, 26), False),  # Republic Day
        ("GB", date(2026, 12, 28), False),  # Boxing Day observed
        ("US", date(2027, 12, 31), False),  # New Year's Day 2028 observed
        ("SA", date(2026, 3, 24), False),  # Eid al-Fitr observed
    ],
)
def test_is_business_day(country: str, day: date, expected: bool) -> None:
    assert CALENDARS[country].is_business_day(day) is expected


def test_business_day_navigation() -> None:
    sa = CALENDARS["SA"]
    assert sa.next_business_day(date(2026, 3, 18)) == date(2026, 3, 25)
    assert sa.next_business_day(date(2026, 3, 25)) == date(2026, 3, 26)
    assert sa.add_business_days(date(2026, 3, 19), 7) == date(2026, 4, 2)
    assert sa.add_business_days(date(2026, 3, 19), 0) == date(2026, 3, 19)
    # backwards from Wed 25: Tue 24 .. Thu 19 Eid, Wed 18 (1), Tue 17 (2)
    assert sa.add_business_days(date(2026, 3, 25), -2) == date(2026, 3, 17)
    assert sa.roll_forward(date(2026, 3, 20)) == date(2026, 3, 25)
    assert sa.roll_forward(date(2026, 3, 25)) == date(2026, 3, 25)


def test_local_day_boundaries_follow_dst() -> None:
    gb = CALENDARS["GB"]
    assert gb.end_of_day(date(2026, 3, 29)) == datetime(2026, 3, 29, 22, 59, 59, tzinfo=UTC)
    assert gb.end_of_day(date(2026, 3, 28)) == datetime(2026, 3, 28, 23, 59, 59, tzinfo=UTC)
    assert gb.start_of_day(date(2026, 10, 26)) == datetime(2026, 10, 26, 0, 0, tzinfo=UTC)
    assert gb.local_date(datetime(2026, 6, 1, 23, 30, tzinfo=UTC)) == date(2026, 6, 2)


def test_calendar_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="XX"):
        BusinessCalendar("XX", "UTC")
    with pytest.raises(ValueError, match="ZZZ"):
        BusinessCalendar("GB", "Europe/London", subdiv="ZZZ")
    with pytest.raises(ValueError, match="Mars"):
        BusinessCalendar("GB", "Mars/Olympus_Mons")
    with pytest.raises(TypeError):
        CALENDARS["GB"].is_business_day(datetime(2026, 1, 5, tzinfo=UTC))
    assert BusinessCalendar("GB", ZoneInfo("Europe/London")).tz.key == "Europe/London"


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 1, 5, 9, 0)
    aware = naive.replace(tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        add_duration(naive, parse_duration("1 day"), CALENDARS["GB"])
    with pytest.raises(ValueError, match="timezone-aware"):
        due_with_pauses(aware, parse_duration("1 day"), CALENDARS["GB"], [(naive, aware)])
    with pytest.raises(ValueError, match="timezone-aware"):
        time_left(aware, naive)


# --- pauses ---------------------------------------------------------------------------

GB = CALENDARS["GB"]
MON = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # Mon 5 Jan 2026, London is on GMT


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_no_pauses_is_add_duration() -> None:
    five = parse_duration("5 business days")
    # Tue 6 (1), Wed 7 (2), Thu 8 (3), Fri 9 (4), Mon 12 (5)
    assert due_with_pauses(MON, five, GB, []) == utc("2026-01-12 23:59:59")


def test_pause_over_a_weekend_gives_back_business_time_only() -> None:
    # Fri 12:00 → Mon 12:00: 12 h of Friday + 12 h of Monday = one business day back
    pauses = [(utc("2026-01-09 12:00"), utc("2026-01-12 12:00"))]
    assert due_with_pauses(MON, parse_duration("5 business days"), GB, pauses) == utc(
        "2026-01-13 23:59:59"
    )


def test_short_pause_of_a_day_clock_rounds_up_to_a_whole_day() -> None:
    # 3 days from Mon 5 → Thu 8 end; a 1-hour pause moves it to Fri 9 00:59:59 → Fri 9 end
    pauses = [(utc("2026-01-06 10:00"), utc("2026-01-06 11:00"))]
    assert due_with_pauses(MON, parse_duration("3 days"), GB, pauses) == utc("2026-01-09 23:59:59")


def test_each_short_pause_of_a_day_clock_gives_back_a_day() -> None:
    # the first pause moves Thu 8 end to Fri 9 00:59:59 (→ Fri 9 end); the second starts
    # after 00:59:59, while the clock still runs to the end of Fri 9: Sat 10 00:59:59 → Sat end
    pauses = [
        (utc("2026-01-06 10:00"), utc("2026-01-06 11:00")),
        (utc("2026-01-09 09:00"), utc("2026-01-09 10:00")),
    ]
    assert due_with_pauses(MON, parse_duration("3 days"), GB, pauses) == utc("2026-01-10 23:59:59")


def test_pauses_add_exact_elapsed_time_and_merge_overlaps() -> None:
    # 72 hours → Thu 8 09:00; pauses 10:00-12:00 and 11:00-12:30 merge to 2.5 h
    pauses = [
        (utc("2026-01-06 11:00"), utc("2026-01-06 12:30")),
        (utc("2026-01-06 10:00"), utc("2026-01-06 12:00")),
    ]
    assert due_with_pauses(MON, parse_duration("72 hours"), GB, pauses) == utc("2026-01-08 11:30")


def test_pause_moves_a_month_from_its_corresponding_date() -> None:
    # received Wed 31 Dec 2025; 1 month → Sat 31 Jan → Mon 2 Feb. A 48 h pause moves the
    # corresponding date to Mon 2 Feb 23:59:59, a working day: still Mon 2 Feb, the roll
    # over the weekend is not given twice
    start = utc("2025-12-31 09:00")
    month = parse_duration("1 month")
    assert add_duration(start, month, GB) == utc("2026-02-02 23:59:59")
    pauses = [(utc("2026-01-10 00:00"), utc("2026-01-12 00:00"))]
    assert due_with_pauses(start, month, GB, pauses) == utc("2026-02-02 23:59:59")
    # 72 h instead → Tue 3 Feb
    pauses = [(utc("2026-01-10 00:00"), utc("2026-01-13 00:00"))]
    assert due_with_pauses(start, month, GB, pauses) == utc("2026-02-03 23:59:59")
    # stopped during the roll (Sun 1 Feb 10:00, 38 h before Mon 2 Feb 23:59:59) and resumed
    # 72 h later on Wed 4 Feb 10:00: those 38 h remain → Thu 5 Feb 23:59:59
    pauses = [(utc("2026-02-01 10:00"), utc("2026-02-04 10:00"))]
    assert due_with_pauses(start, month, GB, pauses) == utc("2026-02-05 23:59:59")


def test_pauses_outside_the_running_clock() -> None:
    five = parse_duration("5 business days")
    before = (utc("2026-01-01 00:00"), utc("2026-01-05 08:00"))
    after = (utc("2026-01-13 00:00"), utc("2026-01-20 00:00"))
    assert due_with_pauses(MON, five, GB, [before, after]) == utc("2026-01-12 23:59:59")
    assert due_with_pauses(MON, parse_duration("10 hours"), GB, [before]) == utc("2026-01-05 19:00")
    # a pause straddling the start only counts from the start: Mon 09:00-12:00 = 3 h
    straddle = (utc("2026-01-05 08:00"), utc("2026-01-05 12:00"))
    assert due_with_pauses(MON, parse_duration("10 hours"), GB, [straddle]) == utc(
        "2026-01-05 22:00"
    )
    # an open pause that began after the clock ran out changes nothing
    assert due_with_pauses(MON, five, GB, [(after[0], None)]) == utc("2026-01-12 23:59:59")


def test_open_pause_leaves_no_deadline() -> None:
    open_pause = [(utc("2026-01-07 10:00"), None)]
    assert due_with_pauses(MON, parse_duration("5 business days"), GB, open_pause) is None
    assert due_with_pauses(MON, IMMEDIATE, GB, open_pause) == MON


def test_pause_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        due_with_pauses(MON, parse_duration("1 day"), GB, [(utc("2026-01-07"), utc("2026-01-06"))])


# --- extensions and time left -----------------------------------------------------------


def test_extend_by_two_months_ico_example() -> None:
    # received Wed 3 Sep 2025 → due Fri 3 Oct; extended by 2 months → Wed 3 Dec 2025
    due = add_duration(utc("2025-09-03 10:00"), parse_duration("1 month"), GB)
    assert due == datetime(2025, 10, 3, 23, 59, 59, tzinfo=ZoneInfo("Europe/London"))
    assert extend(due, parse_duration("2 months"), GB) == utc("2025-12-03 23:59:59")


def test_extend_business_days_over_eid() -> None:
    due = datetime.fromisoformat("2026-03-18T23:59:59+03:00")
    # Thu 19-Tue 24 Eid/weekend; Wed 25 (1), Thu 26 (2)
    assert extend(due, parse_duration("2 business days"), CALENDARS["SA"]) == (
        datetime.fromisoformat("2026-03-26T23:59:59+03:00")
    )


def test_successive_extensions_are_checked_against_the_original_due() -> None:
    original = utc("2026-01-30 23:59:59")  # Fri 30 Jan
    limit = max_extended_due(original, parse_duration("2 months"), GB)
    assert limit == datetime.fromisoformat("2026-03-30T23:59:59+01:00")  # Mon 30 Mar, BST
    once = extend(original, parse_duration("1 month"), GB)
    assert once == utc("2026-03-02 23:59:59")  # Sat 28 Feb → Mon 2 Mar
    twice = extend(once, parse_duration("1 month"), GB)
    assert twice == datetime.fromisoformat("2026-04-02T23:59:59+01:00")  # Thu 2 Apr
    assert once <= limit < twice


def test_time_left() -> None:
    due = utc("2026-01-12 23:59:59")
    assert time_left(due, utc("2026-01-12 22:59:59")) == timedelta(hours=1)
    assert time_left(due, utc("2026-01-13 00:59:59")) == timedelta(hours=-1)
    assert time_left(due, datetime.fromisoformat("2026-01-12T23:59:59+00:00")) == timedelta(0)


# --- properties -------------------------------------------------------------------------

COUNTRIES = st.sampled_from(sorted(ZONES))
STARTS = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
UNITS = st.sampled_from([unit for unit in Unit if unit is not Unit.IMMEDIATE])
SMALL = st.integers(min_value=1, max_value=40)
LAST_SECOND = time(23, 59, 59)
PROPERTY = settings(max_examples=300, deadline=None)


def local(moment: datetime, calendar: BusinessCalendar) -> datetime:
    return moment.astimezone(calendar.tz)


@PROPERTY
@given(country=COUNTRIES, start=STARTS, n=SMALL)
def test_business_day_deadline_is_the_end_of_the_nth_business_day(
    country: str, start: datetime, n: int
) -> None:
    calendar = CALENDARS[country]
    due = add_duration(start, Duration(n, Unit.BUSINESS_DAYS), calendar)
    assert due.tzinfo is UTC
    end = local(due, calendar)
    assert end.time() == LAST_SECOND
    assert calendar.is_business_day(end.date())
    first = calendar.local_date(start)
    days = [first + timedelta(days=i) for i in range(1, (end.date() - first).days + 1)]
    assert sum(calendar.is_business_day(day) for day in days) == n


@PROPERTY
@given(country=COUNTRIES, start=STARTS, n=st.integers(min_value=1, max_value=24))
def test_month_deadline_is_a_working_day_on_or_after_the_corresponding_date(
    country: str, start: datetime, n: int
) -> None:
    calendar = CALENDARS[country]
    due = local(add_duration(start, Duration(n, Unit.MONTHS), calendar), calendar)
    first = calendar.local_date(start)
    months = first.year * 12 + first.month - 1 + n
    corresponding = (months // 12, months % 12 + 1)
    assert due.time() == LAST_SECOND
    assert calendar.is_business_day(due.date())
    assert (due.year, due.month) >= corresponding
    # only non-working days lie between the corresponding date and the deadline
    for back in range(1, 15):
        day = due.date() - timedelta(days=back)
        if (day.year, day.month) < corresponding or (
            (day.year, day.month) == corresponding and day.day < first.day
        ):
            break
        assert not calendar.is_business_day(day)


@PROPERTY
@given(country=COUNTRIES, start=STARTS, unit=UNITS, n=SMALL)
def test_results_are_aware_utc_and_end_of_day_for_day_units(
    country: str, start: datetime, unit: Unit, n: int
) -> None:
    calendar = CALENDARS[country]
    due = add_duration(start, Duration(n, unit), calendar)
    assert due.tzinfo is UTC
    assert due > start
    if unit in (Unit.SECONDS, Unit.MINUTES, Unit.HOURS):
        assert (
            due - start
            == {
                Unit.SECONDS: timedelta(seconds=n),
                Unit.MINUTES: timedelta(minutes=n),
                Unit.HOURS: timedelta(hours=n),
            }[unit]
        )
    else:
        assert local(due, calendar).time() == LAST_SECOND
    if unit is Unit.DAYS:
        assert (local(due, calendar).date() - calendar.local_date(start)).days == n


@PROPERTY
@given(
    country=COUNTRIES,
    start=STARTS,
    later=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)),
    unit=UNITS,
    n=SMALL,
)
def test_a_later_start_never_gives_an_earlier_deadline(
    country: str, start: datetime, later: timedelta, unit: Unit, n: int
) -> None:
    calendar = CALENDARS[country]
    duration = Duration(n, unit)
    assert add_duration(start, duration, calendar) <= add_duration(
        start + later, duration, calendar
    )


@PROPERTY
@given(country=COUNTRIES, start=STARTS, unit=UNITS, n=SMALL, more=SMALL)
def test_a_longer_duration_never_gives_an_earlier_deadline(
    country: str, start: datetime, unit: Unit, n: int, more: int
) -> None:
    calendar = CALENDARS[country]
    shorter = add_duration(start, Duration(n, unit), calendar)
    assert shorter <= add_duration(start, Duration(n + more, unit), calendar)
    assert add_duration(start, IMMEDIATE, calendar) == start <= shorter


@PROPERTY
@given(
    country=COUNTRIES,
    start=STARTS,
    unit=UNITS,
    n=SMALL,
    offset=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10)),
    longer=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10)),
)
def test_pauses_only_ever_move_the_deadline_later(
    country: str,
    start: datetime,
    unit: Unit,
    n: int,
    offset: timedelta,
    length: timedelta,
    longer: timedelta,
) -> None:
    calendar = CALENDARS[country]
    duration = Duration(n, unit)
    plain = add_duration(start, duration, calendar)
    assert due_with_pauses(start, duration, calendar, []) == plain
    begin = start + offset
    short = due_with_pauses(start, duration, calendar, [(begin, begin + length)])
    long = due_with_pauses(start, duration, calendar, [(begin, begin + length + longer)])
    assert short is not None
    assert long is not None
    assert plain <= short <= long
    assert short.tzinfo is UTC
    if begin >= plain:
        assert short == plain
    elif unit is not Unit.BUSINESS_DAYS:
        assert short >= begin + length  # the requester's time never eats the clock
    if unit is Unit.BUSINESS_DAYS:
        end = local(long, calendar)
        assert end.time() == LAST_SECOND
        assert calendar.is_business_day(end.date())


@PROPERTY
@given(
    country=COUNTRIES,
    start=st.datetimes(
        min_value=datetime(2024, 1, 1),
        max_value=datetime(2030, 12, 31),
        timezones=st.sampled_from([ZoneInfo(zone) for zone in sorted(set(ZONES.values()))]),
        allow_imaginary=False,
    ),
    unit=UNITS,
    n=SMALL,
)
def test_local_starts_in_any_zone_give_the_same_deadline_as_utc(
    country: str, start: datetime, unit: Unit, n: int
) -> None:
    calendar = CALENDARS[country]
    duration = Duration(n, unit)
    due = add_duration(start, duration, calendar)
    assert due == add_duration(start.astimezone(UTC), duration, calendar)
    assert due.tzinfo is UTC
