"""Outgoing mail: verification codes by SMTP (`SMTP_URL`), or into `var/mail/` without one.

`smtp://user:pass@host:port` speaks plain SMTP and upgrades with STARTTLS whenever the
server offers it; `smtps://` connects with TLS from the first byte (port 465 by default,
25 for `smtp://`). Credentials are never sent over an unencrypted connection except to a
loopback relay. Failures come out as `TemporaryMailError` (worth retrying: network,
timeouts, 4xx, and server-side set-up such as a refused login) or `PermanentMailError`
(the server refused this recipient or this message with a 5xx: retrying cannot help).
Log lines name the masked recipient, never a body or a code.
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import re
import secrets
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from bot.i18n import LANGUAGES, RTL, _, translate, translations
from bot.logs import mask_email
from bot.outbox import SendError
from bot.sealed import derive_key, seal, unseal

if TYPE_CHECKING:
    from bot.settings import Settings

__all__ = [
    "FileMailer",
    "MailError",
    "Mailer",
    "PermanentMailError",
    "SmtpMailer",
    "TemporaryMailError",
    "make_mailer",
    "verification_email",
]

log = logging.getLogger(__name__)


class MailError(Exception):
    """A mail could not be handed over; the message says why, with addresses masked."""


class TemporaryMailError(MailError):
    """Try again later: the network, the server or its set-up failed this time."""


class PermanentMailError(MailError):
    """The server refused this recipient or this message for good (a 5xx reply)."""


class Mailer(Protocol):
    """Something that delivers one finished message to the address in its To header."""

    async def send(self, message: EmailMessage) -> None: ...


# --- the verification mail -------------------------------------------------------------

SUBJECT = _("{business}: your verification code for request {ref}")
GREETING = _("Hello,")
INTRO = _("Use this code to confirm your request {ref} to {business}:")
HOW = _("Write these 6 digits in your chat with us. The code is valid for 10 minutes.")
IGNORE = _(
    "If you did not make this request, you can ignore this email: nothing will be done "
    "without the code."
)
PRIVATE = _("Do not share this code with anyone else.")
SIGNATURE = _("The privacy team of {business}")


def _html_text(language: str, message: str, **values: str) -> str:
    """The translated sentence as HTML, each value escaped and isolated in its own <bdi>."""
    template = html.escape(translations(language).gettext(message), quote=False)
    return template.format(**{k: f"<bdi>{html.escape(v)}</bdi>" for k, v in values.items()})


def verification_email(
    language: str, *, business: str, code: str, ref: str, to: str
) -> EmailMessage:
    """The code mail in the customer's language: plain text, plus HTML set right-to-left.

    The code stands alone on its own line (and, in HTML, in a left-to-right block), so its
    digits never reorder inside an Arabic or Urdu sentence and copy cleanly. From, Date and
    Message-ID are the mailer's to add.
    """
    lang = language if language in LANGUAGES else "en"
    direction = "rtl" if lang in RTL else "ltr"
    values = {"business": business, "ref": ref}

    message = EmailMessage()
    message["To"] = to
    message["Subject"] = translate(lang, SUBJECT, **values)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies
    plain = [
        translate(lang, GREETING),
        "",
        translate(lang, INTRO, **values),
        "",
        code,
        "",
        translate(lang, HOW),
        "",
        translate(lang, IGNORE),
        translate(lang, PRIVATE),
        "",
        translate(lang, SIGNATURE, **values),
        "",
    ]
    message.set_content("\n".join(plain), subtype="plain", charset="utf-8")

    paragraph = '<p style="margin:0 0 16px">{}</p>'
    code_block = (
        '<p dir="ltr" style="margin:24px 0;text-align:center;font-family:monospace;'
        'font-size:32px;font-weight:bold;letter-spacing:6px;unicode-bidi:isolate">'
        f"{html.escape(code)}</p>"
    )
    body = "\n".join(
        [
            paragraph.format(_html_text(lang, GREETING)),
            paragraph.format(_html_text(lang, INTRO, **values)),
            code_block,
            paragraph.format(_html_text(lang, HOW)),
            paragraph.format(_html_text(lang, IGNORE)),
            paragraph.format(_html_text(lang, PRIVATE)),
            paragraph.format(_html_text(lang, SIGNATURE, **values)),
        ]
    )
    document = (
        f'<!DOCTYPE html>\n<html lang="{lang}" dir="{direction}">\n'
        '<head><meta charset="utf-8"></head>\n'
        f'<body dir="{direction}" style="font-family:sans-serif;font-size:16px;'
        f'text-align:{"right" if direction == "rtl" else "left"}">\n{body}\n</body>\n</html>\n'
    )
    message.add_alternative(document, subtype="html", charset="utf-8")
    message["Content-Language"] = lang  # after the parts: set_content clears Content-* headers
    return message


# --- delivery --------------------------------------------------------------------------


def _recipients(message: EmailMessage) -> list[str]:
    headers = [h for name in ("To", "Cc") for h in message.get_all(name, [])]
    return [str(a.addr_spec) for h in headers for a in getattr(h, "addresses", ())]


def _finish(message: EmailMessage, mail_from: str) -> None:
    """Add the headers a sending agent owes every message: From, Date, Message-ID."""
    if "From" not in message:
        message["From"] = mail_from
    if "Date" not in message:
        message["Date"] = format_datetime(datetime.now(UTC))
    if "Message-ID" not in message:
        message["Message-ID"] = make_msgid(domain=_domain(mail_from))


def _domain(mail_from: str) -> str:
    return parseaddr(mail_from)[1].rpartition("@")[2] or "localhost"


_ADDRESS = re.compile(r"[^\s<>@\"']+@[^\s<>@\"']+")


def _masked(text: str) -> str:
    """A server's reply with every email address in it masked."""
    return _ADDRESS.sub(lambda match: mask_email(match.group(0)), text)


def _classify(exc: Exception) -> MailError:
    """aiosmtplib's and the network's exceptions → temporary or permanent."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refused.code for refused in exc.recipients]
        kind: type[MailError] = (
            PermanentMailError if codes and all(c >= 500 for c in codes) else TemporaryMailError
        )
        return kind(f"recipient refused: SMTP {', '.join(map(str, codes))}")
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError):
        kind = PermanentMailError if exc.code >= 500 else TemporaryMailError
        what = "recipient" if isinstance(exc, aiosmtplib.SMTPRecipientRefused) else "message"
        return kind(f"{what} refused: SMTP {exc.code} {_masked(exc.message)}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return TemporaryMailError(f"SMTP login refused ({exc.code}): check SMTP_URL")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return TemporaryMailError(f"sender refused ({exc.code}): check MAIL_FROM")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return TemporaryMailError(f"SMTP {exc.code} {_masked(exc.message)}")
    if isinstance(exc, aiosmtplib.SMTPException):
        return TemporaryMailError(f"SMTP: {_masked(str(exc))}")
    return TemporaryMailError(f"SMTP connection: {type(exc).__name__}: {exc}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SmtpMailer:
    """Hands messages to an SMTP server, one short connection per message."""

    def __init__(
        self,
        smtp_url: str,
        mail_from: str,
        *,
        timeout: float = 30,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(smtp_url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("SMTP_URL must start with smtp:// or smtps://")
        if not parts.hostname:
            raise ValueError("SMTP_URL names no host")
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self.mail_from = mail_from
        self.timeout = timeout
        self._tls_context = tls_context

    def __repr__(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        return f"SmtpMailer({scheme}://{self.host}:{self.port})"

    async def send(self, message: EmailMessage) -> None:
        """Deliver `message`; raise TemporaryMailError or PermanentMailError on failure."""
        _finish(message, self.mail_from)
        recipients = _recipients(message)
        if not recipients:
            raise PermanentMailError("message has no recipient")
        masked = ", ".join(mask_email(r) for r in recipients)
        sender = parseaddr(self.mail_from)[1] or None
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.implicit_tls,
            start_tls=False if self.implicit_tls else None,  # None: STARTTLS when offered
            tls_context=self._tls_context,
            timeout=self.timeout,
        )
        try:
            async with client:
                if self._username is not None:
                    encrypted = client.get_transport_info("sslcontext") is not None
                    if not encrypted and not _is_loopback(self.host):
                        raise TemporaryMailError(
                            "SMTP server offers no STARTTLS: refusing to send the password "
                            "in clear; use smtps:// or a server with STARTTLS"
                        )
                    await client.login(self._username, self._password or "")
                await client.send_message(message, sender=sender, recipients=recipients)
        except MailError:
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            error = _classify(exc)
            log.warning("mail to %s not sent: %s", masked, error)
            raise error from None
        log.info("mail to %s handed to %s:%s", masked, self.host, self.port)


class FileMailer:
    """Writes each message as an RFC 5322 `.eml` file: the fallback without SMTP_URL."""

    def __init__(self, directory: Path, mail_from: str = "rightsdesk@localhost") -> None:
        self.directory = directory
        self.mail_from = mail_from

    def __repr__(self) -> str:
        return f"FileMailer({str(self.directory)!r})"

    async def send(self, message: EmailMessage) -> None:
        """Write the message, readable by the owner only: it holds a code."""
        _finish(message, self.mail_from)
        recipients = _recipients(message)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{stamp}-{secrets.token_hex(4)}.eml"
        data = message.as_bytes(policy=email.policy.SMTP)
        await asyncio.to_thread(_write_private, path, data)
        log.info("mail to %s written to %s", ", ".join(map(mask_email, recipients)), path)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_suffix(".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    partial.replace(path)  # a reader never sees half a message


def make_mailer(settings: Settings) -> Mailer:
    """SMTP when `SMTP_URL` is set, else `.eml` files under `var/mail/`."""
    if settings.smtp_url is not None:
        return SmtpMailer(settings.smtp_url.get_secret_value(), settings.mail_from)
    return FileMailer(settings.var_dir / "mail", settings.mail_from)


MAIL_KEY_PURPOSE = "rightsdesk outbox mail v1"
MESSAGE_ID_KEY_PURPOSE = "rightsdesk mail message-id v1"


class EmailSender:
    """Delivers queued verification mails from the outbox; the code travels sealed.

    SMTP has no idempotency key: if the process dies after the server accepted a mail but
    before the outbox recorded it, the mail goes again. Each queued mail therefore carries
    a Message-ID fixed by its queued row (an HMAC of its sealed code, unique per row), so a
    resend is the same message (RFC 5322 §3.6.4) and mailbox providers that collapse
    duplicates by Message-ID, Gmail among them, show it once.
    """

    def __init__(self, mailer: Mailer, secret: bytes, *, mail_from: str = "") -> None:
        self._mailer = mailer
        self._key = derive_key(secret, MAIL_KEY_PURPOSE)
        self._id_key = derive_key(secret, MESSAGE_ID_KEY_PURPOSE)
        self._domain = _domain(mail_from)

    def message_id(self, payload: Mapping[str, Any]) -> str:
        """The Message-ID of the queued mail `payload`: the same on every attempt."""
        digest = hmac.new(self._id_key, str(payload["code"]).encode(), hashlib.sha256)
        return f"<{digest.hexdigest()[:32]}.rightsdesk@{self._domain}>"

    def seal_code(self, code: str) -> str:
        return seal(self._key, code, context="verification-code")

    async def send(self, recipient: str, payload: Mapping[str, Any]) -> str | None:
        code = unseal(self._key, str(payload["code"]), context="verification-code")
        message = verification_email(
            str(payload.get("language", "en")),
            business=str(payload["business"]),
            code=code,
            ref=str(payload["ref"]),
            to=recipient,
        )
        message["Message-ID"] = self.message_id(payload)
        try:
            await self._mailer.send(message)
        except TemporaryMailError as exc:
            raise SendError(f"mail: {exc}", retryable=True) from None
        except PermanentMailError as exc:
            raise SendError(f"mail refused: {exc}", retryable=False) from None
        return str(message.get("Message-ID", "")) or None
