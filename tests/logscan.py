"""Every log line the test run writes is kept and, at the end, searched for what logs must
never hold: an email address, a phone number, a verification code or a customer's words.

In-process services log through the root logger into `var/test-logs/`; `serve` child
processes write their own files under pytest's temporary directory. Both are scanned.
Business contacts (the tenants' published numbers and privacy addresses) are not personal
data and are allowed. Findings fail the run (like a failed test) and are printed.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import said

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "var" / "test-logs"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = (
    "twilio",
    "httpx",
    "httpcore",
    "telegram",
    "aiohttp.access",
    "apscheduler",
    "aiosqlite",
    "asyncpg",
    "sqlalchemy.engine",
    "aiosmtpd",
    "mail.log",
    "faker",
    "hypothesis",
    "schemathesis",
    "urllib3",  # the test clients' (schemathesis) request lines: fuzzed URLs, not our logs
    "requests",
)

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"\+\d{8,15}\b")
# A six-digit number standing alone where a code would be written ("code 123456").
CODE = re.compile(r"(?i)\bcode\b\D{0,12}\b\d{6}\b")
ARABIC_SCRIPT = re.compile(r"[\u0600-\u06FF\u0750-\u077F\uFB50-\uFDFF\uFE70-\uFEFF]")
# Words customers and staff write in the tests; none of them belongs in a log.
PHRASES = (
    "delete my data",
    "delete all my data",
    "unsubscribe me",
    "address on your account",
    "the archive takes time",
    "checked the crm",
    "wrong address on my",
    "i object to",
    "my complaint",
)


def _allowed() -> set[str]:
    allowed = {"rightsdesk@localhost"}
    for path in (ROOT / "config" / "tenants").glob("*.toml"):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        allowed.add(str(data.get("privacy_email", "")).lower())
        allowed.update(data.get("channels", {}).get("whatsapp_numbers", []))
    return allowed


@dataclass
class Scan:
    files: int = 0
    lines: int = 0
    findings: list[str] = field(default_factory=list)


def scan_text(text: str, allowed: set[str]) -> list[str]:
    """What in one log line must not be there (empty when the line is clean)."""
    found = []
    found += [f"email {m}" for m in EMAIL.findall(text) if m.lower() not in allowed]
    found += [f"phone {m}" for m in PHONE.findall(text) if m not in allowed]
    found += [f"code {m}" for m in CODE.findall(text)]
    if ARABIC_SCRIPT.search(text):
        found.append("Arabic-script text")
    lowered = text.lower()
    found += [f"customer words {p!r}" for p in PHRASES if p in lowered]
    return found


def scan_files(paths: list[Path]) -> Scan:
    allowed = _allowed()
    words = said.pattern()
    scan = Scan()
    for path in paths:
        scan.files += 1
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                scan.lines += 1
                problems = scan_text(line, allowed)
                if words is not None and (found := words.search(line)):
                    problems.append(f"words written in a test {found.group()[:40]!r}")
                for problem in problems:
                    if len(scan.findings) < 50:
                        scan.findings.append(f"{path}:{number}: {problem}")
    return scan


class LogScan:
    """The pytest plugin: capture from the start, scan at the end."""

    def __init__(self) -> None:
        self.handler: logging.Handler | None = None
        self.path: Path | None = None
        self.scan: Scan | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.path = LOG_DIR / f"run-{os.getpid()}-{worker}.log"
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        root.addHandler(self.handler)
        root.setLevel(logging.DEBUG)  # our own loggers at every level, as production at DEBUG
        for name in NOISY:  # as bot.logs.configure does in production
            logging.getLogger(name).setLevel(logging.WARNING)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
        files = [self.path] if self.path is not None and self.path.exists() else []
        basetemp = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        files += sorted(Path(basetemp).rglob("*.log"))
        self.scan = scan_files(files)
        if self.scan.findings:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.scan is None:
            return
        scan = self.scan
        terminalreporter.write_sep(
            "=",
            f"log scan: {scan.lines} lines in {scan.files} files, "
            f"{len(said.WRITTEN)} texts written in the tests looked for, "
            f"{len(scan.findings)} findings",
        )
        for finding in scan.findings:
            terminalreporter.write_line(finding)
