"""Encryption at rest: what the database holds is ciphertext, lookups still find people,
and an altered or misplaced ciphertext is refused rather than read."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select

from bot.customers import known_customer
from bot.settings import SettingsError, load_settings
from storage import crypto, people
from storage.admin_queries import TicketFilter, dated_page
from storage.db import SessionFactory, create_engine, session_factory, transaction
from storage.models import ContactIdentity, OutboundMessage, Ticket
from tests.service import eventually
from tests.test_intake import TelegramCustomer, WhatsAppCustomer, _code_in, desk

KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
OLD_NUMBER = "whatsapp:+923005550001"


def ring(*keys: str) -> crypto.Keyring:
    return crypto.Keyring.from_secret(
        b"s", [base64.b64decode(k) for k in keys], index_key=b"i" * 32
    )


# --- the keyring ----------------------------------------------------------------------


def test_sealed_text_opens_only_where_it_was_sealed() -> None:
    keys = ring(KEY_A)
    token = keys.seal("amina@example.com", context="contact_identity.value")
    assert token.startswith(f"v1:{crypto.key_id(b'A' * 32)}:")
    assert "amina" not in token
    assert keys.open(token, context="contact_identity.value") == "amina@example.com"
    assert keys.seal("x", context="c") != keys.seal("x", context="c")  # a fresh nonce each time
    with pytest.raises(crypto.SealError, match="altered or misplaced"):
        keys.open(token, context="verification_code.email")  # copied to another column


@pytest.mark.parametrize("position", [8, 20, -1])
def test_a_changed_byte_is_refused(position: int) -> None:
    keys = ring(KEY_A)
    token = keys.seal("+923001234567", context="c")
    head, body = token.rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[position] ^= 0x01
    altered = head + ":" + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(crypto.SealError):
        keys.open(altered, context="c")


def test_first_key_seals_every_key_opens_unknown_key_is_named() -> None:
    old = ring(KEY_A).seal("text", context="c")
    both = ring(KEY_B, KEY_A)
    assert both.open(old, context="c") == "text"
    assert both.needs_reseal(old) and not both.needs_reseal(both.seal("t", context="c"))
    stranger = crypto.Keyring([b"C" * 32], index_key=b"i" * 32)
    with pytest.raises(crypto.SealError, match="not in DATA_KEYS"):
        stranger.open(old, context="c")


def test_blind_index_is_keyed_and_stable_across_data_keys() -> None:
    assert ring(KEY_A).blind_index("a@b.example") == ring(KEY_B).blind_index("a@b.example")
    other = crypto.Keyring.from_secret(b"s", index_key=b"j" * 32)
    assert other.blind_index("a@b.example") != ring(KEY_A).blind_index("a@b.example")
    assert re.fullmatch(r"[0-9a-f]{64}", ring(KEY_A).blind_index("a@b.example"))


def test_settings_default_to_keys_derived_from_secret_key() -> None:
    settings = load_settings(secret_key="one", data_keys="", data_index_key="")
    again = load_settings(secret_key="one", data_keys="", data_index_key="")
    token = settings.keyring().seal("x", context="c")
    assert again.keyring().open(token, context="c") == "x"
    other = load_settings(secret_key="two", data_keys="", data_index_key="")
    with pytest.raises(crypto.SealError):
        other.keyring().open(token, context="c")
    # Moving to DATA_KEYS: the derived key still opens what it sealed.
    moved = load_settings(secret_key="one", data_keys=KEY_B, data_index_key="")
    assert moved.keyring().open(token, context="c") == "x"
    assert moved.keyring().current == crypto.key_id(b"B" * 32)


@pytest.mark.parametrize(
    ("value", "reason"),
    [("not base64!", "not base64"), (base64.b64encode(b"short").decode(), "needs 32")],
)
def test_bad_data_keys_name_the_variable(value: str, reason: str) -> None:
    with pytest.raises(SettingsError, match=f"DATA_KEYS: .*{reason}"):
        load_settings(data_keys=value)


def test_new_key_is_accepted_by_data_keys() -> None:
    assert len(crypto.parse_keys(f"{crypto.new_key()}, {crypto.new_key()}")) == 2


# --- the database ---------------------------------------------------------------------


async def raw_dump(database_url: str) -> dict[str, list[str]]:
    """Every stored value of every table as text, by `table.column`, read around the ORM."""
    engine = create_engine(database_url)
    found: dict[str, list[str]] = {}
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            for name in names:
                result = await conn.execute(sa.text(f'SELECT * FROM "{name}"'))
                columns = list(result.keys())
                for row in result:
                    for column, value in zip(columns, row, strict=True):
                        if value is not None:
                            found.setdefault(f"{name}.{column}", []).append(str(value))
    finally:
        await engine.dispose()
    return found


def holding(dump: dict[str, list[str]], needle: str) -> set[str]:
    return {column for column, values in dump.items() if any(needle in v for v in values)}


async def test_the_database_holds_no_email_phone_or_message_text_in_clear(
    database_url: str,
) -> None:
    email, complaint = "amina.secret@example.com", "nobody answered my letter of March"
    async with desk(database_url) as (svc, mailbox):
        whatsapp = WhatsAppCustomer(svc)
        await whatsapp.say("Please delete my data")
        await whatsapp.say("yes")
        await whatsapp.say(email)
        await eventually(lambda: mailbox.messages)
        filed = await whatsapp.say(_code_in(mailbox, email))
        assert re.search(r"OD-\d{4}-\d{5}", filed)
        telegram = TelegramCustomer(svc, 8800002)
        await telegram.say("/start jooptics")
        await telegram.say("I want to complain")
        await telegram.say(complaint)
        assert re.search(r"JOO-\d{4}-\d{5}", await telegram.say("yes"))
    phone = whatsapp.number.removeprefix("whatsapp:")
    dump = await raw_dump(database_url)
    assert holding(dump, "delete my data") == set()
    assert holding(dump, complaint) == set()
    assert holding(dump, "nobody answered") == set()
    assert holding(dump, email) == set()  # not even the code mail's recipient
    assert holding(dump, phone) == set()  # nor who wrote: routing addresses are sealed too
    assert holding(dump, str(telegram.chat_id)) == set()
    sealed = {
        "contact_identity.value", "ticket_event.data", "inbound_message.payload",
        "conversation.address", "outbound_message.recipient",
    }  # fmt: skip
    assert sealed <= {
        column for column, values in dump.items() if any(v.startswith("v1:") for v in values)
    }
    index = crypto.blind_index(whatsapp.number)
    assert {"conversation.address_index", "inbound_message.sender_index"} <= holding(dump, index)

    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            found = await people.find_requester(
                session, tenant="optician-dynamics", kind="email", value=email
            )
            assert found is not None
            by_phone = await people.find_requester(
                session, tenant="optician-dynamics", kind="whatsapp", value=whatsapp.number
            )
            assert by_phone is not None and by_phone.id == found.id
            page = await session.exec(
                dated_page(TicketFilter(contact_values=(email,)), now=NOW, limit=10, after=None)
            )
            assert [t.kind for t in page] == ["erasure"]
            details = await session.exec(select(Ticket.details).where(Ticket.kind == "complaint"))
            assert details.one() == complaint
    finally:
        await engine.dispose()


async def test_lookups_and_unique_identities_go_through_the_blind_index(
    sessions: SessionFactory,
) -> None:
    async with transaction(sessions) as session:
        first = await people.requester_for(
            session, tenant="jooptics", kind="email", value="a@b.example", now=NOW
        )
        again = await people.requester_for(
            session, tenant="jooptics", kind="email", value="a@b.example", now=NOW
        )
        assert again.id == first.id
        first.customer_ref = "C-9"
        session.add(first)
        other_tenant = await people.requester_for(
            session, tenant="optimizory", kind="email", value="a@b.example", now=NOW
        )
        assert other_tenant.id != first.id
        assert first.id is not None
        await people.attach_identity(
            session, requester_id=first.id, tenant="jooptics", kind="phone", value="+962790000001",
            now=NOW,
        )  # fmt: skip
    async with sessions() as session:
        assert await known_customer(session, tenant="jooptics", email="A@B.example") == "C-9"
        assert await known_customer(session, tenant="jooptics", phone="+962790000001") == "C-9"
        assert await known_customer(session, tenant="jooptics", phone="+962790000002") is None
    with pytest.raises(sa.exc.IntegrityError):
        async with transaction(sessions) as session:
            assert first.id is not None
            session.add(
                ContactIdentity(
                    requester_id=first.id, tenant="jooptics", kind="email", value="a@b.example"
                )
            )


async def _tamper(engine: AsyncEngine, table: str, column: str, change: Any) -> None:
    async with engine.begin() as conn:
        row = (await conn.execute(sa.text(f"SELECT id, {column} FROM {table}"))).first()
        assert row is not None
        await conn.execute(
            sa.text(f"UPDATE {table} SET {column} = :v WHERE id = :id"),
            {"v": change(row[1]), "id": row[0]},
        )


async def test_altered_or_moved_ciphertext_is_refused(
    engine: AsyncEngine, sessions: SessionFactory
) -> None:
    async with transaction(sessions) as session:
        await people.requester_for(
            session, tenant="jooptics", kind="email", value="a@b.example", now=NOW
        )

    def flip(token: str) -> str:
        head, body = token.rsplit(":", 1)
        return head + ":" + ("B" if body[5] != "B" else "C").join((body[:5], body[6:]))

    await _tamper(engine, "contact_identity", "value", flip)
    async with sessions() as session:
        with pytest.raises(crypto.SealError):
            list(await session.exec(select(ContactIdentity)))

    # A valid ciphertext from another column is refused too (the column is bound in).
    moved = crypto.keyring().seal("a@b.example", context="verification_code.email")
    await _tamper(engine, "contact_identity", "value", lambda _old: moved)
    async with sessions() as session:
        with pytest.raises(crypto.SealError, match="altered or misplaced"):
            list(await session.exec(select(ContactIdentity)))

    # Plain text put in place of a ciphertext is not read as if it were sealed.
    await _tamper(engine, "contact_identity", "value", lambda _old: "a@b.example")
    async with sessions() as session:
        with pytest.raises(crypto.SealError):
            list(await session.exec(select(ContactIdentity)))


# --- the migration --------------------------------------------------------------------


def _downgrade(connection: sa.Connection, revision: str) -> None:
    from alembic import command

    from storage.db import alembic_config

    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def test_migration_seals_existing_rows_and_downgrade_opens_them(engine: AsyncEngine) -> None:
    from storage.db import migrate

    async with engine.begin() as conn:
        await conn.run_sync(_downgrade, "0005")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO requester (id, tenant, created_at) VALUES (1, 'jooptics', :at)"),
            {"at": NOW},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO contact_identity (requester_id, tenant, kind, value, created_at) "
                "VALUES (1, 'jooptics', 'email', 'old@example.com', :at)"
            ),
            {"at": NOW},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO conversation (channel, address, tenant, step, state, updated_at) "
                "VALUES ('telegram', '42', 'jooptics', 'ask_code', :state, :at)"
            ),
            {"state": '{"email": "old@example.com"}', "at": NOW},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO inbound_message (channel, provider_id, kind, sender, payload, "
                "received_at, attempts) VALUES ('telegram', '1', 'message', '42', :p, :at, 0)"
            ),
            {"p": '{"message": {"text": "delete everything please"}}', "at": NOW},
        )
        for sql in (
            "INSERT INTO suppression (tenant, channel, address, category, created_at) "
            "VALUES ('jooptics', 'whatsapp', :a, 'marketing', :at)",
            "INSERT INTO consent_record (tenant, channel, address, category, granted, at) "
            "VALUES ('jooptics', 'whatsapp', :a, 'marketing', false, :at)",
            "INSERT INTO outbound_message (channel, recipient, payload, status, attempts, "
            "next_attempt_at, created_at) VALUES ('whatsapp', :a, '{}', 'sent', 1, :at, :at)",
        ):
            await conn.execute(sa.text(sql), {"a": OLD_NUMBER, "at": NOW})
    await migrate(engine)
    dump = await raw_dump(str(engine.url.render_as_string(hide_password=False)))
    assert holding(dump, "old@example.com") == set()
    assert holding(dump, "delete everything") == set()
    sessions = session_factory(engine)
    async with sessions() as session:
        found = await people.find_requester(
            session, tenant="jooptics", kind="email", value="old@example.com"
        )
        assert found is not None and found.id == 1
        identity = (await session.exec(select(ContactIdentity))).one()
        assert identity.value == "old@example.com"
        from storage.models import Conversation, InboundMessage

        state = (await session.exec(select(Conversation.state))).one()
        assert state == {"email": "old@example.com"}
        payload = (await session.exec(select(InboundMessage.payload))).one()
        assert payload == {"message": {"text": "delete everything please"}}
        conversation = await people.conversation_for_update(
            session, channel="telegram", address="42", tenant="jooptics", now=NOW
        )  # found by its blind index, not made anew
        assert conversation.step == "ask_code" and conversation.address == "42"
        sender = (await session.exec(select(InboundMessage.sender_index))).one()
        assert sender == crypto.blind_index("42")
    assert dump["conversation.address"][0].startswith("v1:")
    assert "inbound_message.sender" not in dump
    assert holding(dump, OLD_NUMBER) == set()
    assert holding(dump, crypto.blind_index(OLD_NUMBER)) == {
        "suppression.address_index", "consent_record.address_index",
        "outbound_message.recipient_index",
    }  # fmt: skip
    async with sessions() as session:
        assert await people.is_suppressed(
            session, tenant="jooptics", channel="whatsapp", address=OLD_NUMBER,
            category="marketing",
        )  # fmt: skip
        sent = (await session.exec(select(OutboundMessage))).one()
        assert sent.recipient == OLD_NUMBER

    async with engine.begin() as conn:
        await conn.run_sync(_downgrade, "0005")
    dump = await raw_dump(str(engine.url.render_as_string(hide_password=False)))
    assert holding(dump, "old@example.com") == {"contact_identity.value", "conversation.state"}
    assert dump["conversation.address"] == ["42"]
    assert holding(dump, OLD_NUMBER) == {
        "suppression.address", "consent_record.address", "outbound_message.recipient",
    }  # fmt: skip
    assert dump["inbound_message.sender"] == [crypto.blind_index("42")]  # compares as before
    await migrate(engine)  # and up again
    async with sessions() as session:
        identity = (await session.exec(select(ContactIdentity))).one()
        assert identity.value == "old@example.com"
