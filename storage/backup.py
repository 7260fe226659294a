"""Backups of the embedded default: a consistent copy of a live SQLite database, and back.

SQLite's online backup API copies the database page by page while `serve` keeps writing
(WAL mode): the copy is the database as it stood at one moment, never a torn file, which
a plain `cp` of a database in use can give. PostgreSQL has its own tools (`pg_dump`).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa


class BackupError(Exception):
    """Why a backup or restore was not made; nothing was changed."""


def sqlite_file(url: str) -> Path:
    """The file behind a `sqlite…:///path` URL."""
    parsed = sa.make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        raise BackupError(
            "backup and restore are for the embedded SQLite database; "
            "for PostgreSQL use pg_dump and pg_restore"
        )
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError("DATABASE_URL names no database file")
    return Path(parsed.database)


def _copy(source: sqlite3.Connection, target: Path) -> None:
    destination = sqlite3.connect(target)
    try:
        source.backup(destination, pages=1024)
    finally:
        destination.close()


def check(path: Path) -> int:
    """Check that `path` is a sound rightsdesk database; returns its number of tickets."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: cannot open: {exc}") from None
    try:
        verdict = connection.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise BackupError(f"{path}: damaged: {verdict}")
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if not {"alembic_version", "ticket"} <= tables:
            raise BackupError(f"{path}: not a rightsdesk database")
        return int(connection.execute("SELECT count(*) FROM ticket").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: not a database: {exc}") from None
    finally:
        connection.close()


def backup(url: str, target: Path) -> int:
    """Copy the live database at `url` to `target` (a new file); returns its ticket count."""
    source_path = sqlite_file(url)
    if not source_path.is_file():
        raise BackupError(f"{source_path}: no database yet")
    if target.exists():
        raise BackupError(f"{target}: already exists; choose a new file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(source_path, timeout=30)
    try:
        _copy(source, partial)
    finally:
        source.close()
    count = check(partial)
    partial.rename(target)
    return count


def restore(url: str, source: Path, *, now: datetime | None = None) -> tuple[int, Path | None]:
    """Put the backup `source` in place of the database at `url` (the service stopped).

    The database being replaced is kept beside it as `<name>.before-restore-<time>`.
    Returns the restored ticket count and where the old database was kept.
    """
    count = check(source)
    target = sqlite_file(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    kept: Path | None = None
    if target.exists():
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        kept = target.with_name(f"{target.name}.before-restore-{stamp}")
        live = sqlite3.connect(target, timeout=30)
        try:
            _copy(live, kept)
        finally:
            live.close()
    backup_connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        # The backup API writes the whole file under SQLite's own lock, WAL included.
        _copy(backup_connection, target)
    finally:
        backup_connection.close()
    return count, kept
