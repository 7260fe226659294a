"""The `rightsdesk` command as an operator runs it: a real child process, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TENANTS_DIR


def rightsdesk(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str = ""):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "TELEGRAM_"))}
    base.update(TENANTS_DIR=str(TENANTS_DIR), SECRET_KEY="test")
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=base,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_passes_on_the_shipped_tenants(tmp_path: Path) -> None:
    result = rightsdesk("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for slug in ("optician-dynamics", "jooptics", "optimizory"):
        assert f"ok  {slug}" in result.stdout


def test_check_config_names_file_and_key_of_a_broken_tenant(tmp_path: Path) -> None:
    broken = tmp_path / "tenants"
    broken.mkdir()
    text = (TENANTS_DIR / "jooptics.toml").read_text()
    (broken / "jooptics.toml").write_text(
        text.replace("[requests]", '[requests]\nforget_me = "7 days"')
    )
    result = rightsdesk("check-config", cwd=tmp_path, env={"TENANTS_DIR": str(broken)})
    assert result.returncode == 2
    assert "jooptics.toml" in result.stderr
    assert "requests.forget_me" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PORT", "eighty"), ("DATABASE_URL", "mysql://x"), ("TELEGRAM_WEBHOOK_SECRET", "has space")],
)
def test_invalid_settings_name_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    result = rightsdesk("check-config", cwd=tmp_path, env={variable: value})
    assert result.returncode == 2
    assert variable in result.stderr


def test_webhook_mode_needs_a_secret(tmp_path: Path) -> None:
    result = rightsdesk(
        "check-config",
        cwd=tmp_path,
        env={"PUBLIC_BASE_URL": "https://x.example", "TELEGRAM_BOT_TOKEN": "1:abc"},
    )
    assert result.returncode == 2 and "TELEGRAM_WEBHOOK_SECRET" in result.stderr


def test_migrate_then_tokens_and_admins(tmp_path: Path, database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    migrated = rightsdesk("migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    created = rightsdesk("token", "create", "crm", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("rd_") and len(token) > 40
    assert rightsdesk("token", "create", "crm", cwd=tmp_path, env=env).returncode == 1
    assert rightsdesk("token", "revoke", "crm", cwd=tmp_path, env=env).returncode == 0
    assert rightsdesk("token", "revoke", "crm", cwd=tmp_path, env=env).returncode == 1
    admin = rightsdesk(
        "admin",
        "create",
        "Boss@Example.com",
        "--password-stdin",
        cwd=tmp_path,
        env=env,
        stdin="correct horse battery\n",
    )
    assert admin.returncode == 0, admin.stderr
    short = rightsdesk(
        "admin",
        "create",
        "v@example.com",
        "--role",
        "viewer",
        "--password-stdin",
        cwd=tmp_path,
        env=env,
        stdin="short\n",
    )
    assert short.returncode == 1 and "12 characters" in short.stderr
    # Neither the token nor the password is stored in clear.
    import asyncio

    from sqlmodel import select

    from storage.db import create_engine, session_factory
    from storage.models import AdminUser, ApiToken

    async def stored() -> tuple[list[ApiToken], list[AdminUser]]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                tokens = list(await session.exec(select(ApiToken)))
                admins = list(await session.exec(select(AdminUser)))
                return tokens, admins
        finally:
            await engine.dispose()

    tokens, admins = asyncio.run(stored())
    assert tokens[0].token_hash != token and token not in tokens[0].token_hash
    assert tokens[0].revoked_at is not None
    assert [a.email for a in admins] == ["boss@example.com"]
    assert admins[0].password_hash.startswith("$argon2")


def test_customers_import_adds_updates_and_reports_bad_lines(
    tmp_path: Path, database_url: str
) -> None:
    import asyncio

    from bot.customers import known_customer
    from storage.db import create_engine, session_factory

    env = {"DATABASE_URL": database_url}
    assert rightsdesk("migrate", cwd=tmp_path, env=env).returncode == 0
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text(
        "Name,Email,Phone,Customer ID\n"
        "Amina Khan,Amina@Example.com,+92 300 1234567,C-001\n"
        "No Contact,,,C-002\n"
        "Bilal,,0092-300-7654321,C-003\n"
    )
    first = rightsdesk(
        "customers",
        "import",
        str(csv_file),
        "--tenant",
        "optician-dynamics",
        cwd=tmp_path,
        env=env,
    )
    assert first.returncode == 0, first.stderr
    assert "2 added, 0 updated, 1 skipped" in first.stdout
    assert "line 3" in first.stderr
    again = rightsdesk(
        "customers",
        "import",
        str(csv_file),
        "--tenant",
        "optician-dynamics",
        cwd=tmp_path,
        env=env,
    )
    assert "0 added, 2 updated, 1 skipped" in again.stdout
    wrong = rightsdesk(
        "customers", "import", str(csv_file), "--tenant", "nope", cwd=tmp_path, env=env
    )
    assert wrong.returncode == 2 and "optician-dynamics" in wrong.stderr

    async def lookups() -> tuple[str | None, str | None, str | None]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                return (
                    await known_customer(
                        session, tenant="optician-dynamics", email="amina@example.com"
                    ),
                    await known_customer(
                        session, tenant="optician-dynamics", phone="+923007654321"
                    ),
                    await known_customer(session, tenant="jooptics", email="amina@example.com"),
                )
        finally:
            await engine.dispose()

    assert asyncio.run(lookups()) == ("C-001", "C-003", None)
