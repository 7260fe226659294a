"""`rightsdesk rotate-key`: re-seal every value that is not under the current key.

Each batch is its own short transaction, and each row is written only if it still holds
what was read (compare-and-set), so a running service keeps reading and writing: a row it
rewrote meanwhile is already under its current key and is left alone. Running it again
finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

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


async def rotate(engine: AsyncEngine, *, batch: int = BATCH) -> Report:
    """Re-seal under the keyring's current key whatever another key sealed."""
    ring = crypto.keyring()
    report = Report(current=ring.current)
    prefix = f"{crypto.VERSION}:{ring.current}:"
    for name, column, _is_json in crypto.SEALED_COLUMNS:
        context = f"{name}.{column}"
        table = _table(name, column)
        value = table.c[column]
        resealed = unreadable = 0
        last = 0
        while True:
            async with engine.begin() as conn:
                rows = (
                    await conn.execute(
                        sa.select(table.c.id, value)
                        .where(
                            table.c.id > last,
                            value.is_not(None),
                            value != crypto.EMPTY,
                            sa.not_(value.startswith(prefix, autoescape=True)),
                        )
                        .order_by(table.c.id)
                        .limit(batch)
                    )
                ).all()
                for row_id, old in rows:
                    try:
                        new = ring.seal(ring.open(old, context=context), context=context)
                    except crypto.SealError:
                        unreadable += 1
                        continue
                    done = await conn.execute(
                        table.update()
                        .where(table.c.id == row_id, value == old)
                        .values({column: new})
                    )
                    resealed += done.rowcount
            if not rows:
                break
            last = rows[-1][0]
        report.resealed[context] = resealed
        if unreadable:
            report.unreadable[context] = unreadable
    await _rotate_files(engine, ring, report, batch)
    return report


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
    resealed = unreadable = 0
    last = 0
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(table.c.id, table.c.ticket_id, table.c.seal_id, table.c.sealed)
                    .where(table.c.id > last)
                    .order_by(table.c.id)
                    .limit(batch)
                )
            ).all()
            for row_id, ticket_id, seal_id, old in rows:
                if bytes(old).startswith(prefix):
                    continue
                context = f"desk_file:{ticket_id}:{seal_id}"
                try:
                    new = ring.seal_bytes(ring.open_bytes(old, context=context), context=context)
                except crypto.SealError:
                    unreadable += 1
                    continue
                done = await conn.execute(
                    table.update().where(table.c.id == row_id).values(sealed=new)
                )
                resealed += done.rowcount
        if not rows:
            break
        last = rows[-1][0]
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
