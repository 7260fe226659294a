"""Shared fixtures: a fresh database per test on SQLite and on PostgreSQL, strict skips."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import crypto
from storage.db import SessionFactory, create_engine, migrate, session_factory

ROOT = Path(__file__).resolve().parent.parent

# Encryption at rest, the same for this process and every child it starts (they inherit the
# environment), whatever SECRET_KEY a test gives: rows one writes, the others read.
TEST_DATA_KEY = base64.b64encode(b"rightsdesk-test-data-key-32bytes").decode()
TEST_INDEX_KEY = base64.b64encode(b"rightsdesk-test-index-key-32byte").decode()
os.environ.setdefault("DATA_KEYS", TEST_DATA_KEY)
os.environ.setdefault("DATA_INDEX_KEY", TEST_INDEX_KEY)
crypto.configure(
    crypto.Keyring.from_secret(
        b"test-secret-key",
        crypto.parse_keys(os.environ["DATA_KEYS"]),
        index_key=crypto.parse_keys(os.environ["DATA_INDEX_KEY"])[0],
    )
)
TENANTS_DIR = ROOT / "config" / "tenants"
PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
STRICT = os.environ.get("RIGHTSDESK_STRICT_SKIPS", "") not in ("", "0", "false")


def need(condition: bool, reason: str) -> None:
    """Skip when a real part (PostgreSQL, chromium) is missing; on CI, fail instead."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"required for this run (RIGHTSDESK_STRICT_SKIPS): {reason}")
    pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With RIGHTSDESK_STRICT_SKIPS set, any skipped test fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if STRICT and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{database}"


async def _pg_execute(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_available() -> bool:
    try:
        asyncio.run(_pg_execute("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """A migrated template database, copied for each test; None without PostgreSQL."""
    if not _pg_available():
        yield None
        return
    name = f"rd_tpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))

    async def prepare() -> None:
        engine = create_engine(_pg_url(name))
        await migrate(engine)
        await engine.dispose()

    asyncio.run(prepare())
    yield name
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"

    async def prepare() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await migrate(engine)
        await engine.dispose()

    asyncio.run(prepare())
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    pg_template: str | None,
) -> Iterator[str]:
    """A fresh, migrated database for one test: each test runs on both engines."""
    if request.param == "sqlite":
        path = tmp_path / "rightsdesk.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    yield from _fresh_postgres(pg_template)


@pytest.fixture
def postgres_url(pg_template: str | None) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, for tests about several processes."""
    yield from _fresh_postgres(pg_template)


def _fresh_postgres(pg_template: str | None) -> Iterator[str]:
    need(pg_template is not None, "PostgreSQL at 127.0.0.1:5432 is not reachable")
    name = f"rd_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _pg_url(name)
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest_asyncio.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> SessionFactory:
    return session_factory(engine)


def pytest_configure(config: pytest.Config) -> None:
    from tests.logscan import LogScan

    if not config.pluginmanager.has_plugin("logscan"):
        config.pluginmanager.register(LogScan(), "logscan")
