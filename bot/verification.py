"""Proof of identity by a 6-digit code mailed to the address the business knows.

Rules (issue 4, item 5), all per ticket and all decided from the injected `now`:
- A code is 6 random digits, stored only as HMAC-SHA256(SECRET_KEY, ticket id, code): a
  hash from one ticket never matches on another, and a leaked table holds no codes.
- A code is valid for 10 minutes. Asking again within 60 seconds of the last mail is
  refused with the seconds left; otherwise a new code replaces the old one (which stops
  working at once: only its hash was kept, and only the newest is kept).
- Wrong tries are counted per ticket across resends, so asking for a new code does not buy
  more guesses. The 5th wrong try locks the ticket's verification for 15 minutes: while
  locked every code is refused, the right one included, and no new code is issued. The
  code that was current when the lock began is dead for good; after the lock a new code
  must be asked for, and the count starts again from zero.
- Input that is not six digits (after folding Arabic-Indic digits, spaces and invisible
  direction marks) is not a guess and is not counted.
- An expired code is refused without counting a try: guessing it can never succeed.

The ticket row is locked (SELECT … FOR UPDATE on PostgreSQL; SQLite's writers are serialised
by BEGIN IMMEDIATE) so that concurrent tries cannot slip past the count. Codes never reach a
log line, an event or a repr; logs carry the ticket id and a masked address.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.logs import mask_email
from bot.mail import Mailer, MailError, verification_email
from bot.understanding import normalise_email
from storage.db import SessionFactory, transaction
from storage.models import Ticket, VerificationCode
from storage.tickets import add_event

__all__ = [
    "CODE_DIGITS",
    "CODE_TTL",
    "LOCK_FOR",
    "MAX_ATTEMPTS",
    "RESEND_COOLDOWN",
    "CheckResult",
    "CheckStatus",
    "IssueResult",
    "IssueStatus",
    "check_code",
    "generate_code",
    "hash_code",
    "issue_code",
    "normalise_code",
    "normalise_email",
    "send_code",
]

log = logging.getLogger(__name__)

CODE_DIGITS = 6
CODE_TTL = timedelta(minutes=10)
RESEND_COOLDOWN = timedelta(seconds=60)
MAX_ATTEMPTS = 5
LOCK_FOR = timedelta(minutes=15)


class IssueStatus(StrEnum):
    ISSUED = "issued"  # a new code: mail `IssueResult.code` now
    COOLDOWN = "cooldown"  # the last one went out less than 60 s ago; nothing sent
    LOCKED = "locked"  # too many wrong tries; nothing sent until `locked_until`
    ALREADY_VERIFIED = "already_verified"  # this ticket's identity is proven already


class CheckStatus(StrEnum):
    VERIFIED = "verified"  # right code: the address in `CheckResult.email` is proven
    WRONG = "wrong"  # counted; `tries_left` more before the lock
    EXPIRED = "expired"  # too old, or killed by a lock: ask for a new one
    LOCKED = "locked"  # refused whatever the code, until `locked_until`
    NO_CODE = "no_code"  # none was ever issued for this ticket
    MALFORMED = "malformed"  # not six digits; not counted as a try
    ALREADY_VERIFIED = "already_verified"  # proven before (a repeated message): nothing changed


@dataclass(frozen=True, slots=True)
class IssueResult:
    """What `issue_code` decided; `code` is set only when ISSUED and never shown in a repr."""

    status: IssueStatus
    code: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    retry_after: int = 0  # COOLDOWN: whole seconds until a new code may be asked for
    locked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What `check_code` decided."""

    status: CheckStatus
    tries_left: int = 0  # WRONG
    locked_until: datetime | None = None  # LOCKED
    email: str | None = None  # VERIFIED, ALREADY_VERIFIED: the address proven


# --- codes -----------------------------------------------------------------------------

# Arabic-Indic ٠-٩ (U+0660) and Extended Arabic-Indic ۰-۹ (U+06F0, Persian and Urdu).
_DIGITS = str.maketrans(
    {**{chr(0x0660 + n): str(n) for n in range(10)}, **{chr(0x06F0 + n): str(n) for n in range(10)}}
)
_SEPARATORS = frozenset("-‐‑‒–—_.")
_CODE = re.compile(rf"[0-9]{{{CODE_DIGITS}}}")


def generate_code() -> str:
    """Six uniformly random digits from the operating system's CSPRNG."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def hash_code(code: str, *, key: bytes, ticket_id: int) -> str:
    """HMAC-SHA256 of the code bound to its ticket, so a stored hash fits nowhere else."""
    message = f"rightsdesk-verification:{ticket_id}:{code}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def normalise_code(text: str) -> str | None:
    """`" ١٢٣ ٤٥٦ "` → `"123456"`; None unless six digits remain.

    Spaces, dashes and dots between digit groups are dropped, as are the invisible
    direction marks a copy from a right-to-left mail can carry.
    """
    folded = unicodedata.normalize("NFKC", text).translate(_DIGITS)
    kept = "".join(
        char
        for char in folded
        if not char.isspace() and char not in _SEPARATORS and unicodedata.category(char) != "Cf"
    )
    return kept if _CODE.fullmatch(kept) else None


# --- storage ---------------------------------------------------------------------------


async def _lock_ticket(session: AsyncSession, ticket_id: int) -> Ticket:
    """The ticket, row-locked until the end of the transaction; LookupError when missing."""
    result = await session.exec(select(Ticket).where(Ticket.id == ticket_id).with_for_update())
    ticket = result.first()
    if ticket is None:
        raise LookupError(f"no ticket {ticket_id}")
    return ticket


async def _current(session: AsyncSession, ticket_id: int) -> VerificationCode | None:
    result = await session.exec(
        select(VerificationCode)
        .where(VerificationCode.ticket_id == ticket_id)
        .order_by(col(VerificationCode.id).desc())
        .limit(1)
    )
    return result.first()


def _locked(row: VerificationCode, now: datetime) -> bool:
    return row.locked_until is not None and now < row.locked_until


async def issue_code(
    session: AsyncSession, *, ticket_id: int, email: str, key: bytes, now: datetime
) -> IssueResult:
    """A new code for the ticket unless it is cooling down, locked or already verified.

    Runs inside the caller's transaction; mail the returned code only after it commits.
    Raises ValueError for an address `normalise_email` rejects, LookupError for no ticket.
    """
    address = normalise_email(email)
    if address is None:
        raise ValueError("not an email address")
    ticket = await _lock_ticket(session, ticket_id)
    row = await _current(session, ticket_id)
    if row is not None:
        if row.verified_at is not None:
            return IssueResult(IssueStatus.ALREADY_VERIFIED)
        if _locked(row, now):
            return IssueResult(IssueStatus.LOCKED, locked_until=row.locked_until)
        wait = (row.last_sent_at + RESEND_COOLDOWN - now).total_seconds()
        if wait > 0:
            return IssueResult(IssueStatus.COOLDOWN, retry_after=max(1, math.ceil(wait)))
    code = generate_code()
    expires_at = now + CODE_TTL
    code_hash = hash_code(code, key=key, ticket_id=ticket_id)
    if row is None:
        row = VerificationCode(
            ticket_id=ticket_id,
            email=address,
            code_hash=code_hash,
            created_at=now,
            expires_at=expires_at,
            last_sent_at=now,
        )
    else:
        row.email = address
        row.code_hash = code_hash
        row.expires_at = expires_at
        row.last_sent_at = now
        if row.locked_until is not None:  # a lock that has ended: a fresh count
            row.locked_until = None
            row.attempts = 0
    session.add(row)
    await add_event(
        session,
        ticket,
        actor="system",
        kind="verification_code_sent",
        at=now,
        data={"expires_at": expires_at.isoformat()},
    )
    log.info("verification code issued for ticket %s to %s", ticket_id, mask_email(address))
    return IssueResult(IssueStatus.ISSUED, code=code, expires_at=expires_at)


async def check_code(
    session: AsyncSession, *, ticket_id: int, code: str, key: bytes, now: datetime
) -> CheckResult:
    """Judge one try at the ticket's code, counting wrong ones and locking at the fifth.

    Runs inside the caller's transaction; a WRONG or LOCKED answer must be committed too,
    or the count is lost. The ticket's own status is the caller's to change on VERIFIED.
    """
    ticket = await _lock_ticket(session, ticket_id)
    row = await _current(session, ticket_id)
    if row is None:
        return CheckResult(CheckStatus.NO_CODE)
    if row.verified_at is not None:
        return CheckResult(CheckStatus.ALREADY_VERIFIED, email=row.email)
    if _locked(row, now):
        log.info("verification try for ticket %s refused: locked", ticket_id)
        return CheckResult(CheckStatus.LOCKED, locked_until=row.locked_until)
    if row.locked_until is not None or now >= row.expires_at:
        return CheckResult(CheckStatus.EXPIRED)
    given = normalise_code(code)
    if given is None:
        return CheckResult(CheckStatus.MALFORMED)
    if hmac.compare_digest(hash_code(given, key=key, ticket_id=ticket_id), row.code_hash):
        row.verified_at = now
        session.add(row)
        await add_event(
            session,
            ticket,
            actor="customer",
            kind="verified",
            at=now,
            data={"method": "email_code", "email": row.email},
        )
        log.info("ticket %s verified by code sent to %s", ticket_id, mask_email(row.email))
        return CheckResult(CheckStatus.VERIFIED, email=row.email)
    row.attempts += 1
    if row.attempts >= MAX_ATTEMPTS:
        row.locked_until = now + LOCK_FOR
        row.expires_at = min(row.expires_at, now)  # this code is dead, even after the lock
        session.add(row)
        await add_event(
            session,
            ticket,
            actor="system",
            kind="verification_locked",
            at=now,
            data={"attempts": row.attempts, "until": row.locked_until.isoformat()},
        )
        log.warning("ticket %s verification locked after %s wrong codes", ticket_id, row.attempts)
        return CheckResult(CheckStatus.LOCKED, locked_until=row.locked_until)
    session.add(row)
    log.info(
        "wrong verification code for ticket %s (%s of %s)", ticket_id, row.attempts, MAX_ATTEMPTS
    )
    return CheckResult(CheckStatus.WRONG, tries_left=MAX_ATTEMPTS - row.attempts)


async def _release_cooldown(
    session: AsyncSession, *, ticket_id: int, code_hash: str, now: datetime
) -> None:
    """The mail never left: let the customer ask again at once (only if it is still ours)."""
    row = await _current(session, ticket_id)
    if row is not None and row.code_hash == code_hash and row.verified_at is None:
        row.last_sent_at = min(row.last_sent_at, now - RESEND_COOLDOWN)
        session.add(row)


async def send_code(
    factory: SessionFactory,
    mailer: Mailer,
    *,
    ticket_id: int,
    email: str,
    key: bytes,
    business: str,
    now: datetime,
    language: str | None = None,
) -> IssueResult:
    """Issue a code (committed first), then mail it in the ticket's language.

    The mail goes out after the commit, so no transaction is held open across SMTP. If
    mailing fails, the cooldown is given back (the customer may ask again at once) and the
    MailError is re-raised: `TemporaryMailError` is worth retrying, `PermanentMailError`
    means the address is refused and the customer should give another.
    """
    async with transaction(factory) as session:
        result = await issue_code(session, ticket_id=ticket_id, email=email, key=key, now=now)
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        ref, ticket_language = ticket.ref, ticket.language
        address = normalise_email(email)
    if result.status is not IssueStatus.ISSUED or result.code is None or address is None:
        return result
    message = verification_email(
        language or ticket_language, business=business, code=result.code, ref=ref, to=address
    )
    try:
        await mailer.send(message)
    except MailError:
        async with transaction(factory) as session:
            await _release_cooldown(
                session,
                ticket_id=ticket_id,
                code_hash=hash_code(result.code, key=key, ticket_id=ticket_id),
                now=now,
            )
        raise
    return result
