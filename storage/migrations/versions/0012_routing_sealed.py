"""routing addresses sealed, with blind indexes for lookups, order and unique keys

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 03:30:00

The last addresses in clear: `conversation.address`, `outbound_message.recipient`,
`suppression.address`, `consent_record.address` and `sandbox_chat.address` become text
sealed with AES-256-GCM (storage/crypto.py) under the keyring of the process that migrates,
each beside an `*_index` column holding its blind index, which the lookups, the per-recipient
order of the outbox and the unique keys use instead. `inbound_message.sender` is only ever
compared (per-sender order, rate limits; the address is in the sealed payload), so it is
replaced by `sender_index` alone. Existing rows are converted in batches of 500. The sealed
columns become TEXT (on SQLite as each table is rebuilt for its new keys and NOT NULLs).

Going down opens the addresses again; `inbound_message.sender` gets the blind index (equal
senders still compare equal; the address itself stays in the payload).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

from storage import crypto

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BATCH = 500
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}  # SQLite's unnamed keys of 0001/0004
# (table, column, its type before this revision, the unique key it is part of)
SEALED: tuple[tuple[str, str, sa.types.TypeEngine[Any], tuple[str, ...]], ...] = (
    ("conversation", "address", sa.String(64), ("channel", "address", "tenant")),
    ("outbound_message", "recipient", sa.String(64), ()),
    ("suppression", "address", sa.String(320), ("tenant", "channel", "address", "category")),
    ("consent_record", "address", sa.String(320), ()),
    ("sandbox_chat", "address", sa.String(64), ("channel", "address")),
)
# PostgreSQL's names for the unique keys of 0001 and 0004
PG_UNIQUE = {
    "conversation": "conversation_channel_address_tenant_key",
    "suppression": "suppression_tenant_channel_address_category_key",
    "sandbox_chat": "sandbox_chat_channel_address_key",
}
NEW_UNIQUE = {
    "conversation": "uq_conversation_address",
    "suppression": "uq_suppression_address",
    "sandbox_chat": "uq_sandbox_chat_address",
}


def _indexed(columns: tuple[str, ...], column: str) -> list[str]:
    return [f"{name}_index" if name == column else name for name in columns]


def _rewrite(table: str, read: str, change: Callable[[str], dict[str, Any]]) -> None:
    """Walk a column in id order, BATCH rows at a time, writing what `change` returns."""
    bind = op.get_bind()
    t = sa.table(table, sa.column("id", sa.Integer), sa.column(read, sa.Text))
    last = 0
    while True:
        rows = bind.execute(
            sa.select(t.c.id, t.c[read])
            .where(t.c.id > last, t.c[read].is_not(None))
            .order_by(t.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        updates = [{"_id": row_id, **change(value)} for row_id, value in rows]
        written = sa.table(table, sa.column("id", sa.Integer))
        for name in updates[0]:
            if name != "_id":
                written.append_column(sa.column(name, sa.Text))
        bind.execute(
            written.update()
            .where(written.c.id == sa.bindparam("_id"))
            .values({name: sa.bindparam(name) for name in updates[0] if name != "_id"}),
            updates,
        )
        last = rows[-1][0]


def _unique_name(bind: sa.engine.Connection, table: str, columns: tuple[str, ...]) -> str:
    for unique in sa.inspect(bind).get_unique_constraints(table):
        if tuple(unique["column_names"]) == columns and unique["name"]:
            return str(unique["name"])
    return NAMING["uq"] % {"table_name": table, "column_0_N_name": "_".join(columns)}


def upgrade() -> None:
    ring = crypto.keyring()  # fail before changing anything when no keyring is set up
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    recreate = "auto" if postgres else "always"
    op.drop_index("ix_outbound_recipient", table_name="outbound_message")
    op.drop_index("ix_admin_inbound_sender", table_name="inbound_message")
    op.add_column("inbound_message", sa.Column("sender_index", sa.String(64), nullable=True))
    for table, column, _old, _unique in SEALED:
        op.add_column(table, sa.Column(f"{column}_index", sa.String(64), nullable=True))
        if postgres:
            op.alter_column(table, column, type_=sa.Text(), existing_type=_old)

    for table, column, _old, _unique in SEALED:
        context = f"{table}.{column}"

        def seal(value: str, column: str = column, context: str = context) -> dict[str, Any]:
            if value.startswith(crypto.VERSION + ":"):  # sealed already: index what it holds
                value = ring.open(value, context=context)
            sealed = ring.seal(value, context=context)
            return {column: sealed, f"{column}_index": ring.blind_index(value)}

        _rewrite(table, column, seal)
    _rewrite("inbound_message", "sender", lambda value: {"sender_index": ring.blind_index(value)})

    with op.batch_alter_table("inbound_message", recreate=recreate) as batch_op:
        batch_op.drop_column("sender")
        batch_op.alter_column("sender_index", existing_type=sa.String(64), nullable=False)
    for table, column, old, unique in SEALED:
        with op.batch_alter_table(table, recreate=recreate, naming_convention=NAMING) as batch_op:
            if unique:
                batch_op.drop_constraint(_unique_name(bind, table, unique), type_="unique")
            if not postgres:
                batch_op.alter_column(column, existing_type=old, type_=sa.Text())
            index = f"{column}_index"
            batch_op.alter_column(index, existing_type=sa.String(64), nullable=False)
            if unique:
                batch_op.create_unique_constraint(NEW_UNIQUE[table], _indexed(unique, column))
    op.create_index("ix_inbound_sender", "inbound_message", ["channel", "sender_index", "id"])
    op.create_index(
        "ix_outbound_recipient", "outbound_message", ["channel", "recipient_index", "id"]
    )


def downgrade() -> None:
    ring = crypto.keyring()
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    recreate = "auto" if postgres else "always"
    op.drop_index("ix_outbound_recipient", table_name="outbound_message")
    op.drop_index("ix_inbound_sender", table_name="inbound_message")
    for table, column, _old, _unique in SEALED:
        context = f"{table}.{column}"

        def open_(value: str, column: str = column, context: str = context) -> dict[str, Any]:
            return {column: ring.open(value, context=context)}

        _rewrite(table, column, open_)
    op.add_column("inbound_message", sa.Column("sender", sa.String(64), nullable=True))
    _rewrite("inbound_message", "sender_index", lambda value: {"sender": value})

    with op.batch_alter_table("inbound_message", recreate=recreate) as batch_op:
        batch_op.drop_column("sender_index")
        batch_op.alter_column("sender", existing_type=sa.String(64), nullable=False)
    for table, column, old, unique in SEALED:
        with op.batch_alter_table(table, recreate=recreate) as batch_op:
            if unique:
                batch_op.drop_constraint(NEW_UNIQUE[table], type_="unique")
            batch_op.drop_column(f"{column}_index")
            batch_op.alter_column(column, existing_type=sa.Text(), type_=old)
            if unique:
                name = PG_UNIQUE[table] if postgres else _unique_name(bind, table, unique)
                batch_op.create_unique_constraint(name, list(unique))
    op.create_index("ix_admin_inbound_sender", "inbound_message", ["channel", "sender", "id"])
    op.create_index("ix_outbound_recipient", "outbound_message", ["channel", "recipient", "id"])
