"""Verification codes on SQLite and PostgreSQL: hashing, expiry, cooldown, the lock, digits,
mailing through a real SMTP server, and no code in any log line."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import select

from bot import verification as v
from bot.mail import FileMailer, PermanentMailError, SmtpMailer, TemporaryMailError
from bot.verification import CheckStatus, IssueStatus
from storage import tickets
from storage.db import SessionFactory, transaction
from storage.enums import TicketStatus
from storage.models import VerificationCode
from tests.test_mail import smtp_server

KEY = b"test-secret-key-for-codes"
T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
EMAIL = "sara.khan@example.com"
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
EXTENDED = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")


async def _ticket(sessions: SessionFactory, language: str = "en") -> tuple[int, str]:
    async with transaction(sessions) as session:
        ticket = await tickets.create_ticket(
            session,
            tenant="od",
            ref_prefix="OD",
            kind="erasure",
            channel="whatsapp",
            received_at=T0,
            status=TicketStatus.AWAITING_VERIFICATION,
            language=language,
        )
        assert ticket.id is not None
        return ticket.id, ticket.ref


async def _issue(
    sessions: SessionFactory, ticket_id: int, at: datetime, email: str = EMAIL
) -> v.IssueResult:
    async with transaction(sessions) as session:
        return await v.issue_code(session, ticket_id=ticket_id, email=email, key=KEY, now=at)


async def _check(
    sessions: SessionFactory, ticket_id: int, code: str, at: datetime
) -> v.CheckResult:
    async with transaction(sessions) as session:
        return await v.check_code(session, ticket_id=ticket_id, code=code, key=KEY, now=at)


async def _rows(sessions: SessionFactory, ticket_id: int) -> list[VerificationCode]:
    async with sessions() as session:
        result = await session.exec(
            select(VerificationCode).where(VerificationCode.ticket_id == ticket_id)
        )
        return list(result)


def _wrong(code: str, n: int = 1) -> str:
    """A six-digit code different from `code`."""
    return f"{(int(code) + n) % 10**6:06d}"


# --- pure parts ------------------------------------------------------------------------


def test_codes_are_six_random_digits() -> None:
    codes = {v.generate_code() for _ in range(300)}
    assert all(len(c) == 6 and c.isascii() and c.isdigit() for c in codes)
    assert len(codes) > 290  # not a constant, not a tiny range
    assert any(c.startswith("0") for c in (v.generate_code() for _ in range(2000)))


def test_hash_is_keyed_and_bound_to_the_ticket() -> None:
    digest = v.hash_code("123456", key=KEY, ticket_id=7)
    assert len(digest) == 64 and "123456" not in digest
    assert digest == v.hash_code("123456", key=KEY, ticket_id=7)
    assert digest != v.hash_code("123456", key=KEY, ticket_id=8)
    assert digest != v.hash_code("123456", key=b"another key", ticket_id=7)
    assert digest != v.hash_code("123457", key=KEY, ticket_id=7)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("123456", "123456"),
        (" 123 456 ", "123456"),
        ("١٢٣٤٥٦", "123456"),
        ("۰۱۲۳۴۵", "012345"),
        ("١٢٣ ٤٥٦", "123456"),
        ("123-456", "123456"),
        ("\u2068048213\u2069", "048213"),  # isolates copied out of an RTL mail
        ("\u200f٠٤٨٢١٣", "048213"),
        ("１２３４５６", "123456"),  # full-width
        ("12345", None),
        ("1234567", None),
        ("12345a", None),
        ("", None),
        ("code 123456", None),
    ],
)
def test_normalise_code(text: str, code: str | None) -> None:
    assert v.normalise_code(text) == code


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("sara@example.com", "sara@example.com"),
        ("  Sara.Khan@Example.COM ", "Sara.Khan@example.com"),
        ("my email is ali+desk@mail.example.pk.", "ali+desk@mail.example.pk"),
        ("<o'neil@example.co.uk>", "o'neil@example.co.uk"),
        ("بريدي: sara@example.com، شكرًا", "sara@example.com"),
        ("x@مثال.السعودية", "x@xn--mgbh0fb.xn--mgberp4a5d4ar"),
        ("mailto:sara@example.com", "sara@example.com"),
        ("sara@example", None),
        ("sara@@example.com", None),
        ("sara..k@example.com", None),
        (".sara@example.com", "sara@example.com"),  # a leading dot is punctuation, stripped
        ("sara@-example.com", None),
        ("sara@example.c0m", None),
        ("sara@exa mple.com", None),
        ("a@example.com b@example.com", None),
        ("no address here", None),
        ("سارہ@example.com", None),  # non-ASCII local part: not every server takes it
        ("a" * 65 + "@example.com", None),
    ],
)
def test_normalise_email(text: str, address: str | None) -> None:
    assert v.normalise_email(text) == address


# --- storage rules, on both databases --------------------------------------------------


async def test_codes_are_stored_hashed(sessions: SessionFactory) -> None:
    ticket_id, _ = await _ticket(sessions)
    issued = await _issue(sessions, ticket_id, T0, email="Sara.Khan@EXAMPLE.com")
    assert issued.status is IssueStatus.ISSUED and issued.code is not None
    assert issued.expires_at == T0 + timedelta(minutes=10)
    assert issued.code not in repr(issued)

    [row] = await _rows(sessions, ticket_id)
    assert row.code_hash == v.hash_code(issued.code, key=KEY, ticket_id=ticket_id)
    assert issued.code not in {row.code_hash, row.email, str(row.id)}
    assert row.email == "Sara.Khan@example.com"
    assert (row.created_at, row.last_sent_at, row.expires_at) == (T0, T0, T0 + v.CODE_TTL)
    assert row.attempts == 0 and row.locked_until is None and row.verified_at is None

    async with sessions() as session:
        events = await tickets.events_of(session, ticket_id)
    sent = [e for e in events if e.kind == "verification_code_sent"]
    assert len(sent) == 1 and issued.code not in str(sent[0].data)


async def test_a_code_from_another_ticket_does_not_verify(sessions: SessionFactory) -> None:
    first, _ = await _ticket(sessions)
    second, _ = await _ticket(sessions)
    one = await _issue(sessions, first, T0)
    two = await _issue(sessions, second, T0)
    assert one.code is not None and two.code is not None
    if one.code != two.code:
        assert (await _check(sessions, second, one.code, T0)).status is CheckStatus.WRONG
    assert (await _check(sessions, second, two.code, T0)).status is CheckStatus.VERIFIED
    assert (await _check(sessions, first, one.code, T0)).status is CheckStatus.VERIFIED


async def test_code_expires_after_ten_minutes(sessions: SessionFactory) -> None:
    early, _ = await _ticket(sessions)
    late, _ = await _ticket(sessions)
    code_early = (await _issue(sessions, early, T0)).code
    code_late = (await _issue(sessions, late, T0)).code
    assert code_early is not None and code_late is not None

    just_in = await _check(sessions, early, code_early, T0 + timedelta(minutes=10, seconds=-1))
    assert just_in.status is CheckStatus.VERIFIED and just_in.email == EMAIL

    at_ten = T0 + timedelta(minutes=10)
    assert (await _check(sessions, late, code_late, at_ten)).status is CheckStatus.EXPIRED
    # guesses at an expired code are pointless, so they are not counted
    for _ in range(6):
        assert (await _check(sessions, late, _wrong(code_late), at_ten)).status is (
            CheckStatus.EXPIRED
        )
    [row] = await _rows(sessions, late)
    assert row.attempts == 0 and row.verified_at is None
    fresh = await _issue(sessions, late, at_ten)
    assert fresh.status is IssueStatus.ISSUED and fresh.code is not None
    assert (await _check(sessions, late, fresh.code, at_ten)).status is CheckStatus.VERIFIED


async def test_resend_waits_sixty_seconds_and_replaces_the_code(sessions: SessionFactory) -> None:
    ticket_id, _ = await _ticket(sessions)
    first = await _issue(sessions, ticket_id, T0)
    assert first.code is not None

    soon = await _issue(sessions, ticket_id, T0 + timedelta(seconds=15))
    assert soon.status is IssueStatus.COOLDOWN and soon.retry_after == 45 and soon.code is None
    almost = await _issue(sessions, ticket_id, T0 + timedelta(seconds=59, milliseconds=500))
    assert almost.status is IssueStatus.COOLDOWN and almost.retry_after == 1
    [row] = await _rows(sessions, ticket_id)
    assert row.code_hash == v.hash_code(first.code, key=KEY, ticket_id=ticket_id)

    second = await _issue(sessions, ticket_id, T0 + timedelta(seconds=60), email="new@example.com")
    assert second.status is IssueStatus.ISSUED and second.code is not None
    assert second.expires_at == T0 + timedelta(minutes=11)
    [row] = await _rows(sessions, ticket_id)  # one row per ticket, refreshed
    assert row.email == "new@example.com" and row.last_sent_at == T0 + timedelta(seconds=60)

    at = T0 + timedelta(seconds=61)
    if first.code != second.code:  # the old code died with the resend
        wrong = await _check(sessions, ticket_id, first.code, at)
        assert wrong.status is CheckStatus.WRONG and wrong.tries_left == 4
    verified = await _check(sessions, ticket_id, second.code, at)
    assert verified.status is CheckStatus.VERIFIED and verified.email == "new@example.com"
    again = await _issue(sessions, ticket_id, at + timedelta(minutes=5))
    assert again.status is IssueStatus.ALREADY_VERIFIED and again.code is None


async def test_five_wrong_codes_lock_out_the_right_one_for_fifteen_minutes(
    sessions: SessionFactory,
) -> None:
    ticket_id, _ = await _ticket(sessions)
    code = (await _issue(sessions, ticket_id, T0)).code
    assert code is not None

    for n, left in zip(range(1, 5), (4, 3, 2, 1), strict=True):
        result = await _check(sessions, ticket_id, _wrong(code, n), T0 + timedelta(seconds=n))
        assert (result.status, result.tries_left) == (CheckStatus.WRONG, left)
    locked_at = T0 + timedelta(seconds=5)
    fifth = await _check(sessions, ticket_id, _wrong(code, 5), locked_at)
    until = locked_at + timedelta(minutes=15)
    assert (fifth.status, fifth.locked_until) == (CheckStatus.LOCKED, until)

    # the right code, while locked: refused, not counted, not verified
    for at in (locked_at, locked_at + timedelta(minutes=1), until - timedelta(seconds=1)):
        refused = await _check(sessions, ticket_id, code, at)
        assert (refused.status, refused.locked_until) == (CheckStatus.LOCKED, until)
        blocked = await _issue(sessions, ticket_id, at)
        assert (blocked.status, blocked.locked_until, blocked.code) == (
            IssueStatus.LOCKED,
            until,
            None,
        )
    [row] = await _rows(sessions, ticket_id)
    assert row.verified_at is None and row.attempts == 5 and row.locked_until == until

    # the lock is over: the old code stays dead, a new one is needed and works
    assert (await _check(sessions, ticket_id, code, until)).status is CheckStatus.EXPIRED
    fresh = await _issue(sessions, ticket_id, until)
    assert fresh.status is IssueStatus.ISSUED and fresh.code is not None
    [row] = await _rows(sessions, ticket_id)
    assert row.attempts == 0 and row.locked_until is None
    if fresh.code != code:
        assert (await _check(sessions, ticket_id, code, until)).status is CheckStatus.WRONG
    done = await _check(sessions, ticket_id, fresh.code, until + timedelta(seconds=30))
    assert done.status is CheckStatus.VERIFIED
    repeat = await _check(sessions, ticket_id, fresh.code, until + timedelta(seconds=31))
    assert repeat.status is CheckStatus.ALREADY_VERIFIED and repeat.email == EMAIL

    async with sessions() as session:
        kinds = [e.kind for e in await tickets.events_of(session, ticket_id)]
    assert kinds == [
        "created",
        "verification_code_sent",
        "verification_locked",
        "verification_code_sent",
        "verified",
    ]


async def test_the_code_current_at_the_lock_stays_dead_after_it(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 15 > 10 minutes the code would have expired anyway; a shorter lock shows the rule.
    monkeypatch.setattr(v, "LOCK_FOR", timedelta(minutes=2))
    ticket_id, _ = await _ticket(sessions)
    code = (await _issue(sessions, ticket_id, T0)).code
    assert code is not None
    for n in range(1, 6):
        await _check(sessions, ticket_id, _wrong(code, n), T0)
    after = T0 + timedelta(minutes=3)  # lock over, code not yet 10 minutes old
    assert (await _check(sessions, ticket_id, code, after)).status is CheckStatus.EXPIRED
    [row] = await _rows(sessions, ticket_id)
    assert row.verified_at is None


async def test_a_new_code_does_not_buy_more_tries(sessions: SessionFactory) -> None:
    ticket_id, _ = await _ticket(sessions)
    code = (await _issue(sessions, ticket_id, T0)).code
    assert code is not None
    for n in range(3):
        await _check(sessions, ticket_id, _wrong(code), T0 + timedelta(seconds=n))
    later = T0 + timedelta(minutes=2)
    code = (await _issue(sessions, ticket_id, later)).code
    assert code is not None
    assert (await _check(sessions, ticket_id, _wrong(code), later)).tries_left == 1
    last = await _check(sessions, ticket_id, _wrong(code), later)
    assert last.status is CheckStatus.LOCKED
    assert (await _check(sessions, ticket_id, code, later)).status is CheckStatus.LOCKED


async def test_concurrent_guesses_cannot_pass_the_count(sessions: SessionFactory) -> None:
    ticket_id, _ = await _ticket(sessions)
    code = (await _issue(sessions, ticket_id, T0)).code
    assert code is not None
    results = await asyncio.gather(
        *(_check(sessions, ticket_id, _wrong(code, n), T0) for n in range(1, 11))
    )
    statuses = sorted(r.status for r in results)
    assert statuses.count(CheckStatus.WRONG) == 4
    assert statuses.count(CheckStatus.LOCKED) == 6
    [row] = await _rows(sessions, ticket_id)
    assert row.attempts == 5


@pytest.mark.parametrize("digits", [ARABIC_INDIC, EXTENDED])
async def test_arabic_indic_digits_are_accepted(
    sessions: SessionFactory, digits: dict[int, str]
) -> None:
    ticket_id, _ = await _ticket(sessions, language="ar")
    code = (await _issue(sessions, ticket_id, T0)).code
    assert code is not None
    typed = f"{code[:3]} {code[3:]}".translate(digits)
    assert not typed.replace(" ", "").isascii()
    result = await _check(sessions, ticket_id, typed, T0 + timedelta(minutes=1))
    assert result.status is CheckStatus.VERIFIED


async def test_malformed_input_and_missing_code(sessions: SessionFactory) -> None:
    ticket_id, _ = await _ticket(sessions)
    assert (await _check(sessions, ticket_id, "123456", T0)).status is CheckStatus.NO_CODE
    code = (await _issue(sessions, ticket_id, T0)).code
    assert code is not None
    for text in ("12345", "hello", "1234567", code + "0"):
        assert (await _check(sessions, ticket_id, text, T0)).status is CheckStatus.MALFORMED
    [row] = await _rows(sessions, ticket_id)
    assert row.attempts == 0
    with pytest.raises(ValueError, match="email"):
        await _issue(sessions, ticket_id, T0 + timedelta(minutes=5), email="not-an-address")
    with pytest.raises(LookupError):
        await _issue(sessions, ticket_id + 1000, T0)


# --- sending, and the logs -------------------------------------------------------------


async def test_send_code_mails_the_code_over_smtp_in_the_ticket_language(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    ticket_id, ref = await _ticket(sessions, language="ar")
    with smtp_server() as (server, port):
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}", "rightsdesk@example.org")
        sent = await v.send_code(
            sessions,
            mailer,
            ticket_id=ticket_id,
            email=EMAIL,
            key=KEY,
            business="Optician Dynamics",
            now=T0,
        )
        assert sent.status is IssueStatus.ISSUED and sent.code is not None
        cooling = await v.send_code(
            sessions,
            mailer,
            ticket_id=ticket_id,
            email=EMAIL,
            key=KEY,
            business="Optician Dynamics",
            now=T0 + timedelta(seconds=20),
        )
        assert cooling.status is IssueStatus.COOLDOWN and cooling.retry_after == 40
    assert len(server.messages) == 1  # the cooldown sent nothing
    got = server.messages[0]
    assert got.rcpt_tos == [EMAIL]
    message = email.message_from_bytes(got.content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert ref in message["Subject"] and "رمز التحقق" in message["Subject"]
    body = message.get_body(("plain",))
    assert body is not None and sent.code in body.get_content().splitlines()

    wrong = _wrong(sent.code)
    assert (await _check(sessions, ticket_id, wrong, T0)).status is CheckStatus.WRONG
    assert (await _check(sessions, ticket_id, sent.code, T0)).status is CheckStatus.VERIFIED

    # aiosmtpd ("mail.log") is the far side's server, not ours: what it logs is not our leak
    ours = [r for r in caplog.records if not r.name.startswith("mail.log")]
    lines = "\n".join(r.getMessage() for r in ours)
    assert "sa***@example.com" in lines  # the flow did log, masked
    assert sent.code not in lines and wrong not in lines
    assert all(sent.code not in repr(r.args) for r in ours)
    # (aiosqlite logs SQL parameters at DEBUG, addresses included; our own lines mask them)
    assert EMAIL not in "\n".join(r.getMessage() for r in ours if r.name.startswith("bot"))


async def test_codes_never_reach_the_logs_with_the_file_fallback(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    ticket_id, _ = await _ticket(sessions, language="ur")
    folder = tmp_path / "mail"
    mailer = FileMailer(folder)
    sent = await v.send_code(
        sessions, mailer, ticket_id=ticket_id, email=EMAIL, key=KEY, business="OD", now=T0
    )
    assert sent.code is not None
    guesses = [_wrong(sent.code, n) for n in range(1, 6)]
    for guess in guesses:
        await _check(sessions, ticket_id, guess, T0)
    await _check(sessions, ticket_id, sent.code, T0)  # locked: refused
    [eml] = list(folder.iterdir())
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    assert body is not None
    assert sent.code in body.get_content().splitlines()
    assert "written to" in caplog.text and "locked" in caplog.text
    for secret in (sent.code, *guesses):
        assert secret not in caplog.text
        assert all(secret not in repr(r.args) for r in caplog.records)


class _Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def send(self, message: EmailMessage) -> None:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize("error", [TemporaryMailError("down"), PermanentMailError("550")])
async def test_a_failed_mail_gives_the_cooldown_back(
    sessions: SessionFactory, error: Exception
) -> None:
    ticket_id, _ = await _ticket(sessions)
    failing = _Failing(error)
    with pytest.raises(type(error)):
        await v.send_code(
            sessions, failing, ticket_id=ticket_id, email=EMAIL, key=KEY, business="OD", now=T0
        )
    assert failing.calls == 1
    retry = await _issue(sessions, ticket_id, T0 + timedelta(seconds=1))
    assert retry.status is IssueStatus.ISSUED  # no 60-second wait for a mail that never left
    # and an ordinary resend right after that one is still held back
    held = await _issue(sessions, ticket_id, T0 + timedelta(seconds=2))
    assert held.status is IssueStatus.COOLDOWN
