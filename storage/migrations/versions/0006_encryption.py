"""encryption at rest: sealed columns, and a blind index for contact identities

Contact identities, ticket details, event data, conversation state, both message payloads
and verification addresses become text sealed with AES-256-GCM (storage/crypto.py), under
the keyring of the process that migrates (`rightsdesk migrate` / `serve`). Existing rows
are sealed in batches of 500. On PostgreSQL the columns become TEXT; SQLite keeps the
declared types (it stores the sealed text as it is). Lookups by contact move from `value`
to `value_index`, with the unique key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 06:00:00
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

from storage import crypto

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BATCH = 500
OLD_UNIQUE = ("tenant", "kind", "value")
OLD_UNIQUE_NAME = "contact_identity_tenant_kind_value_key"  # PostgreSQL's name for it
NEW_UNIQUE = "uq_contact_identity_index"
# (table, column, JSON?, the type before this revision)
COLUMNS: tuple[tuple[str, str, bool, sa.types.TypeEngine[Any]], ...] = (
    ("contact_identity", "value", False, sa.String(320)),
    ("ticket", "details", False, sa.String()),
    ("ticket_event", "data", True, sa.JSON()),
    ("conversation", "state", True, sa.JSON()),
    ("inbound_message", "payload", True, sa.JSON()),
    ("outbound_message", "payload", True, sa.JSON()),
    ("verification_code", "email", False, sa.String(320)),
)


def _context(table: str, column: str) -> str:
    return f"{table}.{column}"


def _rewrite(
    table: str, column: str, change: Callable[[str], dict[str, Any] | None], *extra: str
) -> None:
    """Walk a column in id order, BATCH rows at a time, writing what `change` returns."""
    bind = op.get_bind()
    t = sa.table(table, sa.column("id", sa.Integer), sa.column(column, sa.Text))
    for name in extra:
        t.append_column(sa.column(name, sa.Text))
    last = 0
    while True:
        rows = bind.execute(
            sa.select(t.c.id, t.c[column])
            .where(t.c.id > last, t.c[column].is_not(None))
            .order_by(t.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for row_id, value in rows:
            values = change(value)
            if values:
                bind.execute(t.update().where(t.c.id == row_id).values(**values))
        last = rows[-1][0]


def _seal(table: str, column: str, is_json: bool) -> None:
    ring = crypto.keyring()
    context = _context(table, column)

    def change(value: str) -> dict[str, Any] | None:
        if value.startswith(crypto.VERSION + ":"):
            return None
        values: dict[str, Any] = {}
        if is_json:
            data = json.loads(value)
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            values[column] = crypto.EMPTY if data == {} else ring.seal(text, context=context)
        else:
            values[column] = ring.seal(value, context=context)
        if table == "contact_identity":
            values["value_index"] = ring.blind_index(value)
        return values

    _rewrite(table, column, change, *(["value_index"] if table == "contact_identity" else []))


def _open(table: str, column: str, is_json: bool) -> None:
    ring = crypto.keyring()
    context = _context(table, column)

    def change(value: str) -> dict[str, Any] | None:
        if value == crypto.EMPTY or not value.startswith(crypto.VERSION + ":"):
            return None
        return {column: ring.open(value, context=context)}

    _rewrite(table, column, change)


def _old_unique_name(bind: sa.engine.Connection) -> str | None:
    for unique in sa.inspect(bind).get_unique_constraints("contact_identity"):
        if tuple(unique["column_names"]) == OLD_UNIQUE:
            return unique["name"]
    return None


def upgrade() -> None:
    crypto.keyring()  # fail before changing anything when no keyring is set up
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.drop_index("ix_admin_contact_value", table_name="contact_identity")
    with op.batch_alter_table("contact_identity") as batch_op:
        batch_op.add_column(sa.Column("value_index", sa.String(64), nullable=True))
    if postgres:
        for table, column, _is_json, _old in COLUMNS:
            op.alter_column(table, column, type_=sa.Text(), postgresql_using=f'"{column}"::text')
    for table, column, is_json, _old in COLUMNS:
        _seal(table, column, is_json)
    if postgres:
        name = _old_unique_name(bind)
        if name is not None:
            op.drop_constraint(name, "contact_identity", type_="unique")
        op.alter_column("contact_identity", "value_index", nullable=False)
        op.create_unique_constraint(
            NEW_UNIQUE, "contact_identity", ["tenant", "kind", "value_index"]
        )
    else:
        # SQLite reflects the unnamed constraint of 0001 without a name: the convention names it.
        with op.batch_alter_table(
            "contact_identity",
            recreate="always",
            naming_convention={"uq": "uq_%(table_name)s_%(column_0_N_name)s"},
        ) as batch_op:
            name = _old_unique_name(bind) or "uq_contact_identity_tenant_kind_value"
            batch_op.drop_constraint(name, type_="unique")
            batch_op.alter_column("value_index", existing_type=sa.String(64), nullable=False)
            batch_op.create_unique_constraint(NEW_UNIQUE, ["tenant", "kind", "value_index"])
    op.create_index("ix_contact_identity_value_index", "contact_identity", ["value_index"])


def downgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.drop_index("ix_contact_identity_value_index", table_name="contact_identity")
    for table, column, is_json, _old in COLUMNS:
        _open(table, column, is_json)
    if postgres:
        op.drop_constraint(NEW_UNIQUE, "contact_identity", type_="unique")
        for table, column, is_json, old in COLUMNS:
            using = f'"{column}"::json' if is_json else None
            op.alter_column(table, column, type_=old, postgresql_using=using)
        op.drop_column("contact_identity", "value_index")
        op.create_unique_constraint(OLD_UNIQUE_NAME, "contact_identity", list(OLD_UNIQUE))
    else:
        with op.batch_alter_table("contact_identity", recreate="always") as batch_op:
            batch_op.drop_constraint(NEW_UNIQUE, type_="unique")
            batch_op.drop_column("value_index")
            batch_op.create_unique_constraint(OLD_UNIQUE_NAME, list(OLD_UNIQUE))
    op.create_index("ix_admin_contact_value", "contact_identity", ["value"])
