"""Durations of the legal clock: parsing the tenant-file syntax.

Deadline arithmetic (business days, ICO months, pauses) builds on `Duration`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


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
