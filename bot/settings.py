"""One typed settings object, read once at start-up from the environment and `.env`."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage import crypto

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/rightsdesk.db"


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class Settings(BaseSettings):
    """Everything the service reads from its environment (see INTERFACE.md)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    public_base_url: AnyHttpUrl | None = None
    tenants_dir: Path = Path("config/tenants")
    secret_key: SecretStr | None = None
    data_keys: SecretStr | None = None
    data_index_key: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_base_url: AnyHttpUrl = AnyHttpUrl("https://api.telegram.org")
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_base_url: AnyHttpUrl = AnyHttpUrl("https://api.twilio.com")
    smtp_url: SecretStr | None = None
    mail_from: str = "rightsdesk@localhost"
    run_scheduler: bool = True

    @field_validator(
        "public_base_url",
        "secret_key",
        "data_keys",
        "data_index_key",
        "telegram_bot_token",
        "telegram_webhook_secret",
        "twilio_account_sid",
        "twilio_auth_token",
        "smtp_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if value.startswith(("postgres://", "postgresql://")):
            # Heroku-style URLs name no driver; the service only speaks asyncpg.
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return value

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _telegram_secret_charset(cls, value: SecretStr | None) -> SecretStr | None:
        # Bot API setWebhook: 1-256 characters, only A-Z, a-z, 0-9, _ and -.
        if value is not None:
            raw = value.get_secret_value()
            if not (1 <= len(raw) <= 256) or not all(c.isalnum() or c in "_-" for c in raw):
                raise ValueError("1-256 characters of A-Z, a-z, 0-9, _ and - only")
        return value

    @field_validator("data_keys", "data_index_key")
    @classmethod
    def _data_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            crypto.parse_keys(value.get_secret_value())
        return value

    @field_validator("data_index_key")
    @classmethod
    def _one_index_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(crypto.parse_keys(value.get_secret_value())) != 1:
            raise ValueError("one key only (it never rotates)")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("smtp://", "smtps://")):
            raise ValueError("must start with smtp:// or smtps://")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        if self.public_base_url and self.telegram_bot_token and not self.telegram_webhook_secret:
            raise ValueError(
                "TELEGRAM_WEBHOOK_SECRET: required when PUBLIC_BASE_URL and "
                "TELEGRAM_BOT_TOKEN are set (the bot then runs a webhook)"
            )
        if bool(self.twilio_account_sid) != bool(self.twilio_auth_token):
            raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: set both or neither")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def telegram_enabled(self) -> bool:
        return self.telegram_bot_token is not None

    @property
    def whatsapp_enabled(self) -> bool:
        return self.twilio_account_sid is not None and self.twilio_auth_token is not None

    @property
    def var_dir(self) -> Path:
        """Local state (generated key, mail fallback, default database), beside the cwd."""
        return Path("var")

    @property
    def telegram_base(self) -> str:
        return str(self.telegram_api_base_url).rstrip("/")

    @property
    def twilio_base(self) -> str:
        return str(self.twilio_api_base_url).rstrip("/")

    @property
    def public_url(self) -> str | None:
        """PUBLIC_BASE_URL without its trailing slash, for building absolute URLs."""
        return str(self.public_base_url).rstrip("/") if self.public_base_url else None

    def secret(self) -> bytes:
        """The signing key: SECRET_KEY, else one generated into var/ on first use."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.var_dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip().encode()

    def keyring(self) -> crypto.Keyring:
        """The keys that seal data at rest: DATA_KEYS (first seals), and the key derived
        from SECRET_KEY, which seals when DATA_KEYS is unset and always opens; the blind
        index key is DATA_INDEX_KEY, else derived from SECRET_KEY."""
        keys = crypto.parse_keys(self.data_keys.get_secret_value()) if self.data_keys else []
        index = self.data_index_key
        return crypto.Keyring.from_secret(
            self.secret(),
            keys,
            index_key=crypto.parse_keys(index.get_secret_value())[0] if index else None,
        )


def load_settings(**overrides: object) -> Settings:
    """Build the settings once, turning pydantic's errors into one naming each variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}: {message}" if name else message)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
