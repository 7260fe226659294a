"""`rightsdesk rotate-key`: re-seal every value that is not under the current key.

Each batch is its own short transaction, and each row is written only if it still holds
what was read (compare-and-set), so a running service keeps reading and writing: a row it
rewrote meanwhile is already under its current key and is left alone. Running it again
finds nothing to do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage import crypto

BATCH = 200


@dataclass
class Report:
    """Per column (`table.column`): values re-sealed, and values that could not be opened."""

    resealed: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    current: str = ""

    @property
    def total(self) -> int:
        return sum(self.resealed.values())

    @property
    def failures(self) -> int:
        return sum(self.unreadable.values())


def _table(name: str, column: str) -> sa.TableClause:
    return sa.table(name, sa.column("id", sa.Integer), sa.column(column, sa.Text))


async def rotate(
    engine: AsyncEngine, *, batch: int = BATCH, journal: AsyncEngine | None = None
) -> Report:
    """Re-seal under the keyring's current key whatever another key sealed (and, on
    SQLite, the messages still in the webhooks' `journal`, not yet moved in)."""
    ring = crypto.keyring()
    report = Report(current=ring.current)
    columns = [
        (engine, name, column, f"{name}.{column}") for name, column, _ in crypto.SEALED_COLUMNS
    ]
    if journal is not None:
        columns.append((journal, "inbound_journal", "payload", "inbound_message.payload"))
    for where, name, column, context in columns:
        resealed, unreadable = await _rotate_column(where, ring, name, column, context, batch)
        report.resealed[f"{name}.{column}"] = resealed
        if unreadable:
            report.unreadable[f"{name}.{column}"] = unreadable
    await _rotate_files(engine, ring, report, batch)
    return report


async def _batches(
    engine: AsyncEngine, table: sa.TableClause, query: sa.Select[Any], batch: int
) -> AsyncIterator[tuple[AsyncConnection, Sequence[Any]]]:
    """`query`'s rows in id order, `batch` at a time, each batch in a transaction of its own
    (committed when the caller asks for the next)."""
    last = 0
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(query.where(table.c.id > last).order_by(table.c.id).limit(batch))
            ).all()
            if not rows:
                return
            yield conn, rows
        last = rows[-1][0]


async def _rotate_column(
    engine: AsyncEngine, ring: crypto.Keyring, name: str, column: str, context: str, batch: int
) -> tuple[int, int]:
    """(values re-sealed, values no key opens) of one sealed column."""
    prefix = f"{crypto.VERSION}:{ring.current}:"
    table = _table(name, column)
    value = table.c[column]
    query = sa.select(table.c.id, value).where(
        value.is_not(None),
        value != crypto.EMPTY,
        sa.not_(value.startswith(prefix, autoescape=True)),
    )
    resealed = unreadable = 0
    async for conn, rows in _batches(engine, table, query, batch):
        for row_id, old in rows:
            try:
                new = ring.seal(ring.open(old, context=context), context=context)
            except crypto.SealError:
                unreadable += 1
                continue
            done = await conn.execute(
                table.update().where(table.c.id == row_id, value == old).values({column: new})
            )
            resealed += done.rowcount
    return resealed, unreadable


async def _rotate_files(
    engine: AsyncEngine, ring: crypto.Keyring, report: Report, batch: int
) -> None:
    """Files (`desk_file.sealed`), bound to their ticket and seal id, re-sealed the same way."""
    table = sa.table(
        "desk_file",
        sa.column("id", sa.Integer),
        sa.column("ticket_id", sa.Integer),
        sa.column("seal_id", sa.String),
        sa.column("sealed", sa.LargeBinary),
    )
    prefix = f"{crypto.VERSION}:{ring.current}:".encode()
    query = sa.select(table.c.id, table.c.ticket_id, table.c.seal_id, table.c.sealed)
    resealed = unreadable = 0
    async for conn, rows in _batches(engine, table, query, batch):
        for row_id, ticket_id, seal_id, old in rows:
            if bytes(old).startswith(prefix):
                continue
            context = f"desk_file:{ticket_id}:{seal_id}"
            try:
                new = ring.seal_bytes(ring.open_bytes(old, context=context), context=context)
            except crypto.SealError:
                unreadable += 1
                continue
            done = await conn.execute(table.update().where(table.c.id == row_id).values(sealed=new))
            resealed += done.rowcount
    report.resealed["desk_file.sealed"] = resealed
    if unreadable:
        report.unreadable["desk_file.sealed"] = unreadable


async def census(engine: AsyncEngine) -> dict[str, dict[str, int]]:
    """How many values of each sealed column each key id holds (`{}` and NULL left out)."""
    counts: dict[str, dict[str, int]] = {}
    async with engine.connect() as conn:
        for name, column, _is_json in crypto.SEALED_COLUMNS:
            table = _table(name, column)
            rows = await conn.execute(
                sa.select(table.c[column]).where(
                    table.c[column].is_not(None), table.c[column] != crypto.EMPTY
                )
            )
            per_key: dict[str, int] = {}
            for (value,) in rows:
                parts = value.split(":", 2)
                kid = parts[1] if len(parts) == 3 else "(not sealed)"
                per_key[kid] = per_key.get(kid, 0) + 1
            counts[f"{name}.{column}"] = per_key
    return counts
