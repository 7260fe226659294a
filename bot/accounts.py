"""Admin-page users (argon2 password hashes) and API bearer tokens (stored as hashes)."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.exc import IntegrityError

from storage.db import SessionFactory, transaction
from storage.models import AdminUser, ApiToken, utcnow

TOKEN_PREFIX = "rd_"  # noqa: S105 (a label, not a secret)
MIN_PASSWORD = 12

# argon2id at OWASP's first recommended setting (Password Storage Cheat Sheet: m = 19 MiB,
# t = 2, p = 1), not argon2-cffi's default of 64 MiB: every sign-in held that much for its
# duration, which put `serve`'s resident peak at 223 MB (bench.scale). Hashes made with
# other parameters still verify and are re-hashed at the next sign-in.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class AccountError(Exception):
    """An account or token could not be created as asked."""


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password needs at least {MIN_PASSWORD} characters")


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def token_hash(token: str) -> str:
    """Tokens are 256 random bits, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create_admin(
    sessions: SessionFactory, *, email: str, password: str, role: str = "admin"
) -> AdminUser:
    if role not in ("admin", "viewer"):
        raise AccountError(f"unknown role {role!r}")
    check_password(password)
    user = AdminUser(email=email.strip().lower(), password_hash=hash_password(password), role=role)
    try:
        async with transaction(sessions) as session:
            session.add(user)
    except IntegrityError:
        raise AccountError(f"an admin user {email!r} exists already") from None
    return user


async def create_token(sessions: SessionFactory, *, name: str) -> str:
    """Store a new token's hash and return the token itself, which is never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        async with transaction(sessions) as session:
            session.add(ApiToken(name=name, token_hash=token_hash(token)))
    except IntegrityError:
        raise AccountError(f"a token named {name!r} exists already") from None
    return token


async def revoke_token(sessions: SessionFactory, *, name: str) -> bool:
    async with transaction(sessions) as session:
        result = await session.exec(
            sa.update(ApiToken)
            .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))  # type: ignore[arg-type, union-attr]
            .values(revoked_at=utcnow())
        )
    return bool(result.rowcount)
