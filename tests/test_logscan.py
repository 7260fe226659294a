"""The end-of-run log scan finds what it is there to find, and passes what the masks write."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.logs import mask_email, mask_phone
from tests.logscan import _allowed, scan_files, scan_text


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("mail sent to someone@example.com", "email someone@example.com"),
        ("reply to whatsapp:+923001234567 queued", "phone +923001234567"),
        ("verification code 492817 issued", "code code 492817"),
        ("customer wrote احذف بياناتي", "Arabic-script text"),
        ("customer wrote میرا ڈیٹا حذف کریں", "Arabic-script text"),
        ("text was: Please delete my data now", "customer words 'delete my data'"),
    ],
)
def test_a_leak_is_found(line: str, problem: str) -> None:
    assert scan_text(line, _allowed()) == [problem]


@pytest.mark.parametrize(
    "line",
    [
        f"verification code issued for ticket 7 to {mask_email('someone@example.com')}",
        f"reply to {mask_phone('whatsapp:+923001234567')} queued",
        "message from whatsapp:+14155238881 (the business's own number) sent",
        "mail from privacy@optician-dynamics.example",
        "outbox 123456 delivered; update_id 987654 stored",
        "ticket OD-2026-00042 filed via telegram in chat -1001234567890",
    ],
)
def test_masked_and_business_contacts_pass(line: str) -> None:
    assert scan_text(line, _allowed()) == []


def test_files_are_scanned_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "sample.txt"  # not *.log: the run's own scan must not see it
    handler = logging.FileHandler(path)
    log = logging.getLogger("tests.logscan.sample")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("clean line for ticket %s", "OD-2026-00001")
        log.warning("leaked %s", "someone@example.com")
    finally:
        handler.close()
        log.removeHandler(handler)
    scan = scan_files([path])
    assert (scan.files, scan.lines) == (1, 2)
    assert scan.findings == [f"{path}:2: email someone@example.com"]


def test_words_written_in_the_tests_are_looked_for(tmp_path: Path) -> None:
    from tests import said
    from tests.fakes.twilio_api import inbound_whatsapp_form

    words = "please remove the photos of my prescription"
    inbound_whatsapp_form(from_="+923001230000", to="+14155238881", body=words)
    said.written("yes")  # too short to be somebody's words: not looked for
    assert words in said.WRITTEN and "yes" not in said.WRITTEN
    path = tmp_path / "sample.txt"  # not *.log: the run's own scan must not see it
    path.write_text(f"inbound handled: {words}\nticket OD-2026-00001 yes\n", encoding="utf-8")
    scan = scan_files([path])
    assert scan.findings == [f"{path}:1: words written in a test {words[:40]!r}"]
