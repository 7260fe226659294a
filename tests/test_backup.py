"""`rightsdesk backup` copies the SQLite database while `serve` is writing to it; `restore`
puts a copy back. Real processes, a real database file, real webhooks."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp

from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio
from tests.processes import ServeProcess, service_env
from tests.test_cli import rightsdesk
from tests.test_processes import message_form, post_whatsapp


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_backup_under_load_then_restore(tmp_path: Path) -> None:
    live = tmp_path / "live.db"
    url = f"sqlite+aiosqlite:///{live}"
    copies = [tmp_path / f"copy-{n}.db" for n in range(3)]
    async with FakeTelegram() as telegram, FakeTwilio() as twilio, aiohttp.ClientSession() as http:
        env = service_env(url, telegram, twilio)
        server = await ServeProcess(env, tmp_path, "live").start()
        try:

            async def load() -> list[int]:
                statuses = []
                for n in range(60):
                    statuses.append(
                        await post_whatsapp(http, server.url, twilio.auth_token, message_form(n))
                    )
                return statuses

            writing = asyncio.create_task(load())
            for copy in copies:  # while the messages keep coming
                await asyncio.sleep(0.2)
                made = await asyncio.to_thread(
                    rightsdesk, "backup", str(copy), cwd=tmp_path, env={"DATABASE_URL": url}
                )
                assert made.returncode == 0, made.stderr
            assert set(await writing) == {200}
        finally:
            server.stop()
    stored = _count(live, "inbound_message")
    assert stored >= 60
    for copy in copies:  # each copy is whole and sound, whatever moment it caught
        with sqlite3.connect(copy) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert _count(copy, "inbound_message") <= stored
    assert _count(copies[-1], "inbound_message") >= _count(copies[0], "inbound_message")

    # A second backup to the same file is refused rather than overwriting the first.
    again = rightsdesk("backup", str(copies[0]), cwd=tmp_path, env={"DATABASE_URL": url})
    assert again.returncode == 1 and "already exists" in again.stderr

    # Restore the first copy over the live database; the replaced one is kept beside it.
    before = _count(copies[0], "inbound_message")
    restored = rightsdesk("restore", str(copies[0]), cwd=tmp_path, env={"DATABASE_URL": url})
    assert restored.returncode == 0, restored.stderr
    assert _count(live, "inbound_message") == before
    kept = sorted(tmp_path.glob("live.db.before-restore-*"))
    assert len(kept) == 1 and _count(kept[0], "inbound_message") == stored

    # The service starts on the restored database and answers.
    async with FakeTelegram() as telegram, FakeTwilio() as twilio:
        server = await ServeProcess(service_env(url, telegram, twilio), tmp_path, "again").start()
        server.stop()


def test_restore_refuses_what_is_not_a_rightsdesk_backup(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'live.db'}"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (x)")
    for path, reason in ((junk, "not a database"), (other, "not a rightsdesk database")):
        result = rightsdesk("restore", str(path), cwd=tmp_path, env={"DATABASE_URL": url})
        assert result.returncode == 1 and reason in result.stderr, result.stderr
    missing = rightsdesk("restore", "nope.db", cwd=tmp_path, env={"DATABASE_URL": url})
    assert missing.returncode == 1 and "no such file" in missing.stderr
    assert not (tmp_path / "live.db").exists()


def test_backup_of_postgres_points_to_pg_dump(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    result = rightsdesk("backup", str(tmp_path / "x.db"), cwd=tmp_path, env={"DATABASE_URL": url})
    assert result.returncode == 1 and "pg_dump" in result.stderr
