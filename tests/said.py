"""What customers and staff write in the tests, kept so that the log scan (tests/logscan.py)
can look for each of those texts in every log line, not only for a list of known phrases.

The fakes record every text they put into a webhook body (`inbound_whatsapp_form`,
`FakeTelegram.message_update`)."""

from __future__ import annotations

import re

WRITTEN: set[str] = set()
LETTERS = re.compile(r"[^\W\d_]")


def written(text: str | None) -> None:
    """Keep `text` if it is long enough to be somebody's words rather than a menu choice, a
    yes, a code or a command alone (those are matched by other rules or are not personal)."""
    if text is None:
        return
    text = text.strip()
    if len(text) >= 12 and " " in text and len(LETTERS.findall(text)) >= 6:
        WRITTEN.add(text)


def pattern() -> re.Pattern[str] | None:
    """One expression that finds any of the texts written so far."""
    if not WRITTEN:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(WRITTEN, key=len, reverse=True)))
