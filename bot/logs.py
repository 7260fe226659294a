"""Logging set-up and masks: logs carry ids, never message text, codes or whole contacts."""

from __future__ import annotations

import logging
import re

_EMAIL = re.compile(r"^([^@]{0,2})[^@]*@(.+)$")


def mask_phone(value: str) -> str:
    """`whatsapp:+923001234567` → `whatsapp:+92*******67`."""
    prefix, sep, number = value.rpartition(":")
    head = prefix + sep
    if len(number) <= 5:
        return head + "*" * len(number)
    return head + number[:3] + "*" * (len(number) - 5) + number[-2:]


def mask_email(value: str) -> str:
    """`someone@example.com` → `so***@example.com`."""
    match = _EMAIL.match(value)
    return f"{match.group(1)}***@{match.group(2)}" if match else "***"


def mask_address(value: str) -> str:
    """Mask whatever contact this is: an email, a phone number, or a Telegram chat id."""
    if "@" in value:
        return mask_email(value)
    return mask_phone(value)


def configure(level: str = "INFO") -> None:
    """Plain timestamped lines on stderr; chatty client libraries that log bodies are quieted."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # twilio logs request bodies and numbers at INFO, httpx logs URLs holding the bot token.
    # aiosqlite and asyncpg log SQL parameters (emails, numbers) at DEBUG.
    for noisy in (
        "twilio",
        "httpx",
        "httpcore",
        "telegram",
        "aiohttp.access",
        "apscheduler",
        "aiosqlite",
        "asyncpg",
        "sqlalchemy.engine",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
