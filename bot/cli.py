"""The `rightsdesk` command: serve, clock, migrate, check-config, admin, token, customers,
verify-history, purge, backup and restore."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from pathlib import Path

from bot import accounts
from bot.logs import configure
from bot.settings import Settings, SettingsError, load_settings
from bot.tenants import TenantConfigError, Tenants, load_tenants
from storage import crypto
from storage.db import create_engine, migrate, session_factory

EXIT_CONFIG = 2

log = logging.getLogger(__name__)


def _settings(*, database: bool = True) -> Settings:
    """The settings; for a command that opens the database, the keyring set up from them."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"rightsdesk: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    if database:
        crypto.configure(settings.keyring())
    return settings


def _tenants(settings: Settings) -> Tenants:
    try:
        return load_tenants(settings.tenants_dir)
    except TenantConfigError as exc:
        print(f"rightsdesk: invalid tenant configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


# Seconds after start at which `serve` freezes its heap again. Measured (bench/README.md,
# session 7): with start-up's freeze alone a full collection took ≈ 40 ms of CPU at
# 200 webhooks/s, after these 6–13 ms; each freeze after the first kept ≈ 1,000–4,000
# objects for good, whatever garbage happened to be waiting then.
SETTLE_AFTER = (10.0, 60.0, 300.0)


async def settle_heap(
    app: object, *, after: tuple[float, ...] = SETTLE_AFTER
) -> AsyncIterator[None]:
    """While the app runs: `gc.freeze()` at each of `after`'s seconds from its start."""

    async def freeze_later() -> None:
        started = asyncio.get_running_loop().time()
        for at in after:
            await asyncio.sleep(max(0.0, started + at - asyncio.get_running_loop().time()))
            gc.freeze()
            log.debug(
                "heap frozen again: %d objects out of the collector's walk", gc.get_freeze_count()
            )

    task = asyncio.create_task(freeze_later())
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from bot.app import create_app

    settings = _settings()
    configure()
    app = create_app(settings, tenants=_tenants(settings))
    # What start-up built (modules, tenants, templates) lives as long as the process: out
    # of the collector's sight, a full collection no longer walks it (pauses of tens of ms).
    # So does what the first minutes of work build (modules imported on first use, mapper
    # and statement caches, locale data): frozen again a few times after start.
    gc.freeze()
    app.cleanup_ctx.append(settle_heap)
    logging.getLogger("bot.cli").info(
        "rightsdesk serving on http://%s:%s", settings.host, settings.port
    )
    web.run_app(app, host=settings.host, port=settings.port, access_log=None, print=None)
    return 0


def cmd_clock(args: argparse.Namespace) -> int:
    from bot.scheduler import run_clock

    settings = _settings()
    configure()
    asyncio.run(run_clock(settings, _tenants(settings)))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    configure()

    async def run() -> None:
        engine = create_engine(settings.database_url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    print("database is up to date")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(database=False)
    tenants = _tenants(settings)
    for tenant in tenants:
        print(f"ok  {tenant.slug}: {tenant.name}")
    channels = [
        name
        for name, on in (
            ("whatsapp", settings.whatsapp_enabled),
            ("telegram", settings.telegram_enabled),
        )
        if on
    ]
    print(f"settings ok; channels on: {', '.join(channels) or 'none (sandbox only)'}")
    return 0


def cmd_admin_create(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
    try:
        accounts.check_password(password)
    except ValueError as exc:
        print(f"rightsdesk: {exc}", file=sys.stderr)
        return 1

    async def run() -> None:
        engine = create_engine(settings.database_url)
        try:
            await migrate_if_sqlite(engine, settings)
            await accounts.create_admin(
                session_factory(engine), email=args.email, password=password, role=args.role
            )
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except accounts.AccountError as exc:
        print(f"rightsdesk: {exc}", file=sys.stderr)
        return 1
    print(f"created {args.role} {args.email}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    settings = _settings()

    async def run() -> str:
        engine = create_engine(settings.database_url)
        try:
            await migrate_if_sqlite(engine, settings)
            return await accounts.create_token(session_factory(engine), name=args.name)
        finally:
            await engine.dispose()

    try:
        token = asyncio.run(run())
    except accounts.AccountError as exc:
        print(f"rightsdesk: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    settings = _settings()

    async def run() -> bool:
        engine = create_engine(settings.database_url)
        try:
            return await accounts.revoke_token(session_factory(engine), name=args.name)
        finally:
            await engine.dispose()

    if not asyncio.run(run()):
        print(f"rightsdesk: no active token named {args.name!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.name}")
    return 0


def cmd_customers_import(args: argparse.Namespace) -> int:
    from bot.customers import import_customers, read_rows
    from storage.db import transaction
    from storage.models import utcnow

    settings = _settings()
    tenants = _tenants(settings)
    if args.tenant not in tenants:
        print(
            f"rightsdesk: no tenant {args.tenant!r} (have: {', '.join(tenants.slugs)})",
            file=sys.stderr,
        )
        return 2
    try:
        with open(args.file, encoding="utf-8-sig", newline="") as handle:
            rows = read_rows(handle)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        print(f"rightsdesk: {args.file}: {exc}", file=sys.stderr)
        return 1

    async def run() -> tuple[int, int, list[str]]:
        engine = create_engine(settings.database_url)
        try:
            await migrate_if_sqlite(engine, settings)
            async with transaction(session_factory(engine)) as session:
                report = await import_customers(
                    session, tenant=args.tenant, rows=rows, now=utcnow()
                )
            return report.added, report.updated, report.skipped
        finally:
            await engine.dispose()

    added, updated, skipped = asyncio.run(run())
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"{args.tenant}: {added} added, {updated} updated, {len(skipped)} skipped")
    return 0


def cmd_verify_history(args: argparse.Namespace) -> int:
    from storage import history

    settings = _settings()

    async def run() -> tuple[int, list[history.Finding]]:
        engine = create_engine(settings.database_url)
        try:
            async with session_factory(engine)() as session:
                return await history.verify(session, tenant=args.tenant)
        finally:
            await engine.dispose()

    checked, findings = asyncio.run(run())
    for finding in findings:
        print(finding)
    print(f"{checked} tickets checked, {len(findings)} problems", file=sys.stderr)
    return 1 if findings else 0


def cmd_backup(args: argparse.Namespace) -> int:
    from storage import backup

    settings = _settings()
    try:
        count = backup.backup(settings.database_url, Path(args.file))
    except backup.BackupError as exc:
        print(f"rightsdesk: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {count} tickets to {args.file}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from storage import backup

    settings = _settings()
    try:
        count, kept = backup.restore(settings.database_url, Path(args.file))
    except backup.BackupError as exc:
        print(f"rightsdesk: {exc}", file=sys.stderr)
        return 1
    if kept is not None:
        print(f"the database it replaced is kept as {kept}")
    print(f"restored {count} tickets from {args.file}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from bot.retention import purge
    from storage.models import utcnow

    settings = _settings()
    tenants = _tenants(settings)

    async def run() -> list[str]:
        engine = create_engine(settings.database_url)
        try:
            await migrate_if_sqlite(engine, settings)
            report = await purge(
                session_factory(engine), tenants, now=utcnow(), dry_run=args.dry_run
            )
            return report.lines()
        finally:
            await engine.dispose()

    for line in asyncio.run(run()):
        print(line)
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from storage import rotation
    from storage.inbound import Journal

    if args.new_key:
        print(crypto.new_key())
        return 0
    settings = _settings()
    configure()

    async def run() -> rotation.Report:
        engine = create_engine(settings.database_url)
        journal = Journal.beside(settings.database_url)
        try:
            await migrate_if_sqlite(engine, settings)
            if journal is None or not journal.path.exists():
                return await rotation.rotate(engine, batch=args.batch)
            await journal.open()
            return await rotation.rotate(engine, batch=args.batch, journal=journal.engine)
        finally:
            if journal is not None:
                await journal.close()
            await engine.dispose()

    report = asyncio.run(run())
    for column, count in report.resealed.items():
        print(f"{column}: {count} re-sealed")
    for column, count in report.unreadable.items():
        print(f"rightsdesk: {column}: {count} values no key opens", file=sys.stderr)
    print(
        f"{report.total} values re-sealed under key {report.current}, {report.failures} unreadable"
    )
    return 1 if report.failures else 0


async def migrate_if_sqlite(engine: object, settings: Settings) -> None:
    """The embedded default needs no separate `migrate` step, as with `serve`."""
    from storage.db import is_empty

    if settings.is_sqlite and await is_empty(engine):  # type: ignore[arg-type]
        await migrate(engine)  # type: ignore[arg-type]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="rightsdesk", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="web process: webhooks, admin, API, workers").set_defaults(
        func=cmd_serve
    )
    sub.add_parser("clock", help="scheduler only").set_defaults(func=cmd_clock)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("check-config", help="validate settings and tenant files").set_defaults(
        func=cmd_check_config
    )
    admin = sub.add_parser("admin", help="admin-page users").add_subparsers(
        dest="admin_command", required=True
    )
    create = admin.add_parser("create", help="create an admin-page user")
    create.add_argument("email")
    create.add_argument("--role", choices=["admin", "viewer"], default="admin")
    create.add_argument("--password-stdin", action="store_true")
    create.set_defaults(func=cmd_admin_create)
    token = sub.add_parser("token", help="API bearer tokens").add_subparsers(
        dest="token_command", required=True
    )
    token_create = token.add_parser("create", help="print a new token once")
    token_create.add_argument("name")
    token_create.set_defaults(func=cmd_token_create)
    customers = sub.add_parser("customers", help="the optional customer list").add_subparsers(
        dest="customers_command", required=True
    )
    customers_import = customers.add_parser(
        "import", help="import a CSV of name, email, phone, customer id"
    )
    customers_import.add_argument("file")
    customers_import.add_argument("--tenant", required=True)
    customers_import.set_defaults(func=cmd_customers_import)
    token_revoke = token.add_parser("revoke", help="revoke a token")
    token_revoke.add_argument("name")
    token_revoke.set_defaults(func=cmd_token_revoke)
    verify = sub.add_parser(
        "verify-history", help="check every ticket's history chain; non-zero on any break"
    )
    verify.add_argument("--tenant")
    verify.set_defaults(func=cmd_verify_history)
    rotate = sub.add_parser(
        "rotate-key", help="re-seal data at rest under the first DATA_KEYS key (online)"
    )
    rotate.add_argument("--batch", type=int, default=200, help="rows per transaction")
    rotate.add_argument("--new-key", action="store_true", help="print a fresh key and exit")
    rotate.set_defaults(func=cmd_rotate_key)
    backup = sub.add_parser("backup", help="consistent online copy of the SQLite database")
    backup.add_argument("file")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="put a backup in place (stop the service first)")
    restore.add_argument("file")
    restore.set_defaults(func=cmd_restore)
    purge = sub.add_parser("purge", help="apply the tenants' retention periods now")
    purge.add_argument("--dry-run", action="store_true", help="only show what would go")
    purge.set_defaults(func=cmd_purge)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
