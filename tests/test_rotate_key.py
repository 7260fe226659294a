"""`rightsdesk rotate-key`: every value moves to the new key in small transactions while
`serve` keeps answering customers; afterwards the old key can go and everything still reads."""

from __future__ import annotations

import asyncio
import base64
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.desk import file_context
from storage import crypto, people, rotation, tickets
from storage.db import SessionFactory, create_engine, transaction
from storage.desk_models import DeskFile
from tests.conftest import TEST_DATA_KEY, TEST_INDEX_KEY
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio, inbound_whatsapp_form
from tests.processes import ServeProcess, service_env
from tests.service import eventually
from tests.test_processes import post_whatsapp

NEW_KEY = base64.b64encode(b"rightsdesk-test-rotated-key-32by").decode()
NEW_ID = crypto.key_id(base64.b64decode(NEW_KEY))
OLD_ID = crypto.key_id(base64.b64decode(TEST_DATA_KEY))
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
OD_NUMBER = "whatsapp:+14155238881"


def keyring(*keys: str) -> crypto.Keyring:
    return crypto.Keyring(
        [base64.b64decode(k) for k in keys], index_key=base64.b64decode(TEST_INDEX_KEY)
    )


@pytest.fixture
def process_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the process's keyring as it likes; the next test gets the usual one."""
    monkeypatch.setattr(crypto, "_keyring", crypto.keyring())


async def readable_with(engine: AsyncEngine, ring: crypto.Keyring) -> int:
    """Open every sealed value with `ring` alone; how many there were."""
    opened = 0
    async with engine.connect() as conn:
        for table, column, _is_json in crypto.SEALED_COLUMNS:
            rows = await conn.execute(sa.text(f"SELECT {column} FROM {table}"))
            for (value,) in rows:
                if value is not None and value != crypto.EMPTY:
                    ring.open(value, context=f"{table}.{column}")
                    opened += 1
    return opened


async def test_rotation_reseals_everything_and_is_idempotent(
    process_keyring: None, engine: AsyncEngine, sessions: SessionFactory
) -> None:
    crypto.configure(keyring(TEST_DATA_KEY))
    async with transaction(sessions) as session:
        for n in range(7):
            requester = await people.requester_for(
                session, tenant="jooptics", kind="email", value=f"c{n}@example.com", now=NOW
            )
            ticket = await tickets.create_ticket(
                session,
                tenant="jooptics",
                ref_prefix="JOO",
                kind="complaint",
                channel="telegram",
                language="en",
                requester_id=requester.id,
                details=f"complaint number {n}",
                received_at=NOW,
            )
            await tickets.add_event(
                session, ticket, actor="customer", kind="created", at=NOW, data={"n": n}
            )
        assert ticket.id is not None
        file_row = DeskFile(
            ticket_id=ticket.id,
            tenant="jooptics",
            seal_id="f" * 32,
            name="export.csv",
            content_type="text/csv",
            size=9,
            sha256="0" * 64,
            sealed=crypto.keyring().seal_bytes(
                b"a,b\n1,2\n", context=file_context(ticket.id, "f" * 32)
            ),
        )
        session.add(file_row)
    before = await rotation.census(engine)
    assert before["contact_identity.value"] == {OLD_ID: 7}
    assert before["ticket.details"] == {OLD_ID: 7}

    crypto.configure(keyring(NEW_KEY, TEST_DATA_KEY))
    report = await rotation.rotate(engine, batch=3)
    assert report.resealed["contact_identity.value"] == 7
    assert report.resealed["ticket.details"] == 7
    assert report.resealed["ticket_event.data"] >= 7
    assert report.resealed["desk_file.sealed"] == 1
    assert report.failures == 0 and report.current == NEW_ID
    after = await rotation.census(engine)
    assert all(set(counts) <= {NEW_ID} for counts in after.values()), after
    assert (await rotation.rotate(engine)).total == 0  # nothing left to do

    assert await readable_with(engine, keyring(NEW_KEY)) >= 21
    with pytest.raises(crypto.SealError):
        await readable_with(engine, keyring(TEST_DATA_KEY))
    async with sessions() as session:  # the file opens with the new key alone
        stored = (await session.exec(sa.select(DeskFile))).scalars().one()
        context = file_context(stored.ticket_id, stored.seal_id)
        assert keyring(NEW_KEY).open_bytes(stored.sealed, context=context) == b"a,b\n1,2\n"
        with pytest.raises(crypto.SealError):
            keyring(TEST_DATA_KEY).open_bytes(stored.sealed, context=context)
    async with sessions() as session:  # lookups need no re-indexing
        found = await people.find_requester(
            session, tenant="jooptics", kind="email", value="c3@example.com"
        )
        assert found is not None


async def test_rotation_reports_values_no_key_opens(
    process_keyring: None, engine: AsyncEngine, sessions: SessionFactory
) -> None:
    crypto.configure(keyring(TEST_DATA_KEY))
    async with transaction(sessions) as session:
        await people.requester_for(
            session, tenant="jooptics", kind="email", value="c@example.com", now=NOW
        )
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE contact_identity SET value = 'v1:00000000:AAAA'"))
    crypto.configure(keyring(NEW_KEY, TEST_DATA_KEY))
    report = await rotation.rotate(engine)
    assert report.unreadable == {"contact_identity.value": 1}


async def say_all(
    http: aiohttp.ClientSession, serve: ServeProcess, twilio: FakeTwilio, texts: dict[str, str]
) -> None:
    """Each customer sends its text; returns once each has had one more reply."""
    before = {number: len(twilio.sent_messages(to=number)) for number in texts}
    statuses = await asyncio.gather(
        *(
            post_whatsapp(
                http,
                serve.url,
                twilio.auth_token,
                inbound_whatsapp_form(from_=number, to=OD_NUMBER, body=text),
            )
            for number, text in texts.items()
        )
    )
    assert set(statuses) == {200}
    await eventually(
        lambda: all(len(twilio.sent_messages(to=n)) > before[n] for n in texts), timeout=60
    )


def customers(first: int, count: int) -> list[str]:
    return [f"whatsapp:+92300{n:07d}" for n in range(first, first + count)]


async def rotate_key(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "rotate-key",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode()


async def test_rotate_key_while_serve_keeps_answering(database_url: str, tmp_path: Path) -> None:
    early, late = customers(1, 6), customers(101, 6)
    async with FakeTelegram() as telegram, FakeTwilio() as twilio, aiohttp.ClientSession() as http:
        env = service_env(database_url, telegram, twilio)
        # 1. History written under the old key alone.
        old = await ServeProcess(dict(env, DATA_KEYS=TEST_DATA_KEY), tmp_path, "old").start()
        try:
            await say_all(http, old, twilio, dict.fromkeys(early, "Please delete my data"))
            await say_all(http, old, twilio, dict.fromkeys(early, "yes"))
        finally:
            old.stop()

        # 2. The new key seals, the old one still opens; rotate while customers write.
        both = dict(env, DATA_KEYS=f"{NEW_KEY},{TEST_DATA_KEY}")
        serve = await ServeProcess(both, tmp_path, "both").start()
        try:
            rotating = asyncio.create_task(rotate_key(both, tmp_path, "--batch", "2"))
            await say_all(http, serve, twilio, {n: f"c{n[-3:]}@example.com" for n in early})
            await say_all(http, serve, twilio, dict.fromkeys(late, "Please delete my data"))
            code, out = await rotating
            assert code == 0, out
            assert "contact_identity.value: " in out and f"re-sealed under key {NEW_ID}" in out
            await say_all(http, serve, twilio, dict.fromkeys(late, "yes"))
            code, out = await rotate_key(both, tmp_path)  # again: whatever serve wrote meanwhile
            assert code == 0, out
        finally:
            serve.stop()
        assert "Traceback" not in serve.log()

        engine = create_engine(database_url)
        try:
            census = await rotation.census(engine)
            assert all(set(counts) <= {NEW_ID} for counts in census.values()), census
            assert await readable_with(engine, keyring(NEW_KEY)) > 0
        finally:
            await engine.dispose()

        # 3. The old key removed: conversations begun under it carry on.
        new = await ServeProcess(dict(env, DATA_KEYS=NEW_KEY), tmp_path, "new").start()
        try:
            await say_all(http, new, twilio, dict.fromkeys(early, "000000"))  # a wrong code
            await say_all(http, new, twilio, dict.fromkeys(late, "status"))
        finally:
            new.stop()
        assert "Traceback" not in new.log() and "SealError" not in new.log()
        for number in early:
            assert "code" in twilio.sent_messages(to=number)[-1].params["Body"].lower()
        code, out = await rotate_key(dict(env, DATA_KEYS=NEW_KEY), tmp_path)
        assert code == 0 and "0 values re-sealed" in out, out
