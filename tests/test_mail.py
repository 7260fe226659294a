"""Verification mail: a real SMTP server on loopback (plain, AUTH, STARTTLS, implicit TLS),
the `var/mail` fallback, the texts in three languages, and what reaches the logs."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import logging
import re
import socket
import ssl
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from babel.messages.pofile import read_po
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot import mail
from bot.i18n import FSI, LOCALES, PDI
from bot.mail import (
    EmailSender,
    FileMailer,
    PermanentMailError,
    SmtpMailer,
    TemporaryMailError,
    make_mailer,
    verification_email,
)
from bot.settings import Settings

CODE = "048213"
REF = "OD-2026-00042"
BUSINESS = "Optician Dynamics"
TO = "sara.khan@example.com"
FROM = "Rightsdesk <rightsdesk@example.org>"


# --- a real SMTP server on 127.0.0.1 ---------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: bytes | None

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Collector:
    """An aiosmtpd handler: refuses nobody@… (550) and busy@… (451), keeps the rest."""

    messages: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("nobody@"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address.startswith("busy@"):
            return "451 4.3.0 Mailbox temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data if session.authenticated else None
        tls = server.transport.get_extra_info("sslcontext") is not None
        self.messages.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.content,
                tls=tls,
                login=login,
            )
        )
        return "250 Message accepted for delivery"


@dataclass
class Authenticator:
    """Accepts only `desk` / `p@ss word`, and records every attempt."""

    attempts: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.attempts.append((data.login, data.password))
        ok = data.login == b"desk" and data.password == b"p@ss word"
        return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def smtp_server(**kwargs: Any) -> Iterator[tuple[Collector, int]]:
    handler = Collector()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@dataclass
class Certs:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A self-signed certificate for 127.0.0.1, trusted by the client context only."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return Certs(server=server, client=client)


def _plain(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def _html(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


# --- SMTP ------------------------------------------------------------------------------


async def test_smtp_delivers_the_code_with_proper_headers() -> None:
    with smtp_server() as (server, port):
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}", FROM)
        await mailer.send(verification_email("en", business=BUSINESS, code=CODE, ref=REF, to=TO))

    assert len(server.messages) == 1
    got = server.messages[0]
    assert got.mail_from == "rightsdesk@example.org"
    assert got.rcpt_tos == [TO]
    assert got.tls is False and got.login is None
    message = got.message
    assert message["To"] == TO
    assert message["From"] == FROM
    assert message["Subject"] == f"{BUSINESS}: your verification code for request {REF}"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Content-Language"] == "en"
    assert re.fullmatch(r"<[^@>]+@example\.org>", message["Message-ID"])
    assert message["Date"] is not None and message["Date"].datetime.tzinfo is not None
    assert message.get_content_type() == "multipart/alternative"
    plain = _plain(message)
    assert CODE in plain.splitlines()  # the code alone on its own line
    assert f"Use this code to confirm your request {REF} to {BUSINESS}:" in plain
    assert "valid for 10 minutes" in plain
    html = _html(message)
    assert '<html lang="en" dir="ltr">' in html
    assert f">{CODE}</p>" in html


async def test_a_queued_mail_sent_again_is_the_same_message() -> None:
    """After a crash the outbox may send a mail the server already took: it goes under the
    same Message-ID, so it is the same message; another queued mail gets another one."""
    sender = EmailSender(SmtpMailer("smtp://127.0.0.1:1", FROM), b"k" * 32, mail_from=FROM)
    first = {"code": sender.seal_code(CODE), "business": BUSINESS, "ref": REF, "language": "en"}
    second = {**first, "code": sender.seal_code(CODE)}
    with smtp_server() as (server, port):
        sender = EmailSender(
            SmtpMailer(f"smtp://127.0.0.1:{port}", FROM), b"k" * 32, mail_from=FROM
        )
        ids = [await sender.send(TO, first), await sender.send(TO, first)]
        ids.append(await sender.send(TO, second))
    got = [m.message["Message-ID"] for m in server.messages]
    assert got == ids
    assert got[0] == got[1] != got[2]
    assert re.fullmatch(r"<[0-9a-f]{32}\.rightsdesk@example\.org>", got[0])
    other = EmailSender(SmtpMailer("smtp://127.0.0.1:1", FROM), b"j" * 32, mail_from=FROM)
    assert other.message_id(first) != got[0]  # another installation's ids differ


async def test_smtp_arabic_mail_is_right_to_left_with_the_code_kept_apart() -> None:
    with smtp_server() as (server, port):
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}", FROM)
        await mailer.send(verification_email("ar", business=BUSINESS, code=CODE, ref=REF, to=TO))

    message = server.messages[0].message
    assert message["Subject"] == f"{FSI}{BUSINESS}{PDI}: رمز التحقق لطلبك {FSI}{REF}{PDI}"
    assert message["Content-Language"] == "ar"
    plain = _plain(message)
    assert "مرحبًا،" in plain.splitlines()
    assert f"استخدم هذا الرمز لتأكيد طلبك {FSI}{REF}{PDI} المقدَّم إلى {FSI}{BUSINESS}{PDI}:" in plain
    assert CODE in plain.splitlines()
    html = _html(message)
    assert '<html lang="ar" dir="rtl">' in html
    assert '<body dir="rtl"' in html
    # the digits sit in their own left-to-right block, never inside the Arabic sentence
    assert re.search(rf'<p dir="ltr"[^>]*unicode-bidi:isolate[^>]*>{CODE}</p>', html)
    assert f"طلبك <bdi>{REF}</bdi>" in html


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_smtp_with_auth_on_loopback_sends_percent_decoded_credentials() -> None:
    auth = Authenticator()
    with smtp_server(authenticator=auth, auth_require_tls=False, auth_required=True) as (
        server,
        port,
    ):
        mailer = SmtpMailer(f"smtp://desk:p%40ss%20word@127.0.0.1:{port}", FROM)
        await mailer.send(verification_email("en", business=BUSINESS, code=CODE, ref=REF, to=TO))
        assert server.messages[0].login == b"desk"

        wrong = SmtpMailer(f"smtp://desk:guess@127.0.0.1:{port}", FROM)
        with pytest.raises(TemporaryMailError, match="login refused"):
            await wrong.send(verification_email("en", business=BUSINESS, code=CODE, ref=REF, to=TO))
    assert auth.attempts[0] == (b"desk", b"p@ss word")
    assert len(server.messages) == 1
    assert "word" not in repr(mailer) and "desk" not in repr(mailer)


async def test_smtp_upgrades_with_starttls_before_logging_in(certs: Certs) -> None:
    auth = Authenticator()
    # auth_require_tls (aiosmtpd's default): the server refuses AUTH before STARTTLS.
    with smtp_server(tls_context=certs.server, authenticator=auth, auth_required=True) as (
        server,
        port,
    ):
        mailer = SmtpMailer(
            f"smtp://desk:p%40ss%20word@127.0.0.1:{port}", FROM, tls_context=certs.client
        )
        await mailer.send(verification_email("ur", business=BUSINESS, code=CODE, ref=REF, to=TO))
    got = server.messages[0]
    assert got.tls is True and got.login == b"desk"
    assert CODE in _plain(got.message).splitlines()


async def test_smtps_speaks_tls_from_the_first_byte(certs: Certs) -> None:
    with smtp_server(ssl_context=certs.server) as (server, port):
        mailer = SmtpMailer(f"smtps://127.0.0.1:{port}", FROM, tls_context=certs.client)
        await mailer.send(verification_email("en", business=BUSINESS, code=CODE, ref=REF, to=TO))
        # and a certificate nobody vouches for is not accepted
        untrusting = SmtpMailer(f"smtps://127.0.0.1:{port}", FROM)
        with pytest.raises(TemporaryMailError):
            await untrusting.send(
                verification_email("en", business=BUSINESS, code=CODE, ref=REF, to=TO)
            )
    assert len(server.messages) == 1 and server.messages[0].tls is True


async def test_no_password_in_clear_to_a_remote_server(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Authenticator()
    monkeypatch.setattr(mail, "_is_loopback", lambda host: False)  # pretend it is far away
    with smtp_server(authenticator=auth, auth_require_tls=False) as (server, port):
        mailer = SmtpMailer(f"smtp://desk:p%40ss%20word@127.0.0.1:{port}", FROM)
        with pytest.raises(TemporaryMailError, match="STARTTLS"):
            await mailer.send(
                verification_email("en", business=BUSINESS, code=CODE, ref=REF, to=TO)
            )
    assert auth.attempts == [] and server.messages == []


async def test_refused_recipient_is_permanent_and_busy_mailbox_temporary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot")
    with smtp_server() as (server, port):
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}", FROM)
        with pytest.raises(PermanentMailError, match="550") as refused:
            await mailer.send(
                verification_email(
                    "en", business=BUSINESS, code=CODE, ref=REF, to="nobody@example.com"
                )
            )
        with pytest.raises(TemporaryMailError, match="451") as busy:
            await mailer.send(
                verification_email(
                    "en", business=BUSINESS, code=CODE, ref=REF, to="busy@example.com"
                )
            )
    assert not isinstance(busy.value, PermanentMailError)
    assert server.messages == []
    assert "nobody@example.com" not in str(refused.value)
    assert "no***@example.com" in caplog.text
    assert "nobody@example.com" not in caplog.text and CODE not in caplog.text


async def test_unreachable_server_is_temporary() -> None:
    mailer = SmtpMailer(f"smtp://127.0.0.1:{_free_port()}", FROM, timeout=5)
    with pytest.raises(TemporaryMailError):
        await mailer.send(verification_email("en", business=BUSINESS, code=CODE, ref=REF, to=TO))


def test_smtp_url_parsing() -> None:
    plain = SmtpMailer("smtp://mail.example.com", FROM)
    assert (plain.host, plain.port, plain.implicit_tls) == ("mail.example.com", 25, False)
    tls = SmtpMailer("smtps://u:p@mail.example.com", FROM)
    assert (tls.host, tls.port, tls.implicit_tls) == ("mail.example.com", 465, True)
    assert repr(tls) == "SmtpMailer(smtps://mail.example.com:465)"
    with pytest.raises(ValueError, match="smtp"):
        SmtpMailer("http://mail.example.com", FROM)
    with pytest.raises(ValueError, match="host"):
        SmtpMailer("smtp://", FROM)


# --- the var/mail fallback -------------------------------------------------------------


async def test_file_mailer_writes_a_parseable_eml_and_logs_no_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "var" / "mail"
    mailer = FileMailer(folder, "rightsdesk@example.org")
    await mailer.send(verification_email("ur", business=BUSINESS, code=CODE, ref=REF, to=TO))

    files = list(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".eml"
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    raw = files[0].read_bytes()
    assert b"\r\n" in raw and raw.isascii()  # RFC 5322 on the wire: CRLF, encoded headers
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"] == TO and message["From"] == "rightsdesk@example.org"
    assert (
        message["Subject"] == f"{FSI}{BUSINESS}{PDI}: آپ کی درخواست {FSI}{REF}{PDI} کا تصدیقی کوڈ"
    )
    assert message["Message-ID"] and message["Date"]
    plain = _plain(message)
    assert CODE in plain.splitlines()
    assert "یہ 6 ہندسے ہماری چیٹ میں لکھ دیں۔ یہ کوڈ 10 منٹ تک کارآمد ہے۔" in plain
    assert '<html lang="ur" dir="rtl">' in _html(message)

    assert f"mail to sa***@example.com written to {files[0]}" in caplog.text
    assert CODE not in caplog.text and TO not in caplog.text


def test_make_mailer_picks_smtp_or_files() -> None:
    with_smtp = Settings(
        _env_file=None, smtp_url="smtps://desk:secret@mail.example.com:2465", mail_from=FROM
    )
    chosen = make_mailer(with_smtp)
    assert isinstance(chosen, SmtpMailer)
    assert (chosen.host, chosen.port, chosen.implicit_tls) == ("mail.example.com", 2465, True)
    assert chosen.mail_from == FROM

    fallback = make_mailer(Settings(_env_file=None))
    assert isinstance(fallback, FileMailer)
    assert fallback.directory == Path("var") / "mail"


# --- the texts -------------------------------------------------------------------------

TEXTS = [mail.SUBJECT, mail.GREETING, mail.INTRO, mail.HOW, mail.IGNORE, mail.PRIVATE]
TEXTS.append(mail.SIGNATURE)


@pytest.mark.parametrize("language", ["ar", "ur"])
def test_mail_catalog_translates_every_text_with_its_placeholders(language: str) -> None:
    with (LOCALES / language / "LC_MESSAGES" / "mail.po").open("rb") as handle:
        catalog = read_po(handle, locale=language)
    for text in TEXTS:
        entry = catalog.get(text)
        assert entry is not None and entry.string, text
        assert set(re.findall(r"{\w+}", str(entry.string))) == set(re.findall(r"{\w+}", text))


@pytest.mark.parametrize(
    ("language", "greeting", "signature"),
    [
        ("en", "Hello,", f"The privacy team of {BUSINESS}"),
        ("ar", "مرحبًا،", f"فريق الخصوصية في {FSI}{BUSINESS}{PDI}"),
        ("ur", "السلام علیکم،", f"{FSI}{BUSINESS}{PDI} کی پرائیویسی ٹیم"),
    ],
)
def test_mail_text_resolves_through_the_merged_catalogs(
    language: str, greeting: str, signature: str
) -> None:
    message = verification_email(language, business=BUSINESS, code=CODE, ref=REF, to=TO)
    lines = _plain(message).splitlines()
    assert lines[0] == greeting
    assert signature in lines
    assert lines.count(CODE) == 1


def test_unknown_language_falls_back_to_english_and_html_is_escaped() -> None:
    message = verification_email(
        "fr", business="Tom & <Jerry>", code=CODE, ref=REF, to="a@example.com"
    )
    assert message["Content-Language"] == "en"
    html = _html(message)
    assert "<bdi>Tom &amp; &lt;Jerry&gt;</bdi>" in html and "<Jerry>" not in html
