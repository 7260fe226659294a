"""Encryption at rest: AES-256-GCM under a keyring from the environment, and blind indexes.

A sealed value is text, `v1:<key id>:<base64url(nonce | ciphertext | tag)>`. The key id says
which key of the ring opens it; the associated data binds it to its column
(`contact_identity.value`), so a ciphertext copied into another column is refused like an
altered one. The first key of the ring seals; every key opens, so `rightsdesk rotate-key`
can re-seal rows one batch at a time while the service keeps running.

Lookups by an encrypted value (a phone number, an email address) go through a blind index:
HMAC-SHA256 of the value under an index key that is separate from the data keys and does
not rotate with them, so an index stays valid across rotations.

The keyring is process-wide because column types (`SealedText`, `SealedJSON`) have no other
way to reach it; a process configures it once at start-up (`bot.cli`, `bot.app`). Keys
configured later in the same process are added to it: the newest seals, all of them open,
and the first blind-index key stays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import Dialect

VERSION = "v1"
NONCE = 12
DATA_KEY_PURPOSE = "rightsdesk data key v1"
INDEX_KEY_PURPOSE = "rightsdesk blind index v1"


class SealError(Exception):
    """A stored value could not be opened: altered, misplaced, or under an unknown key."""


class KeyringNotConfigured(RuntimeError):
    """Nothing set the process's keyring up (bot.cli and bot.app do, from the settings)."""


def derive(secret: bytes, purpose: str) -> bytes:
    """A 256-bit key for one purpose, derived from SECRET_KEY (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        secret
    )


def key_id(key: bytes) -> str:
    """A short, stable name for a key that reveals nothing useful about it."""
    return hashlib.sha256(b"rightsdesk key id\x00" + key).hexdigest()[:8]


def parse_keys(text: str) -> list[bytes]:
    """DATA_KEYS: comma-separated base64 (standard or URL-safe) 32-byte keys, newest first."""
    keys: list[bytes] = []
    for position, part in enumerate(text.split(","), start=1):
        item = part.strip()
        if not item:
            continue
        try:
            raw = base64.b64decode(
                item.replace("-", "+").replace("_", "/") + "=" * (-len(item) % 4), validate=True
            )
        except (binascii.Error, ValueError):
            raise ValueError(f"key {position} is not base64") from None
        if len(raw) != 32:
            raise ValueError(f"key {position} is {len(raw)} bytes; AES-256 needs 32")
        keys.append(raw)
    if not keys:
        raise ValueError("no keys given")
    return keys


def new_key() -> str:
    """A fresh key in DATA_KEYS' format."""
    return base64.b64encode(os.urandom(32)).decode()


class Keyring:
    """Data keys by id (the first seals), and the blind-index key."""

    def __init__(self, keys: Sequence[bytes], *, index_key: bytes) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._keys: dict[str, AESGCM] = {}
        for key in keys:
            self._keys.setdefault(key_id(key), AESGCM(key))
        self.current = key_id(keys[0])
        self._index_key = index_key

    @classmethod
    def from_secret(
        cls, secret: bytes, data_keys: Sequence[bytes] = (), *, index_key: bytes | None = None
    ) -> Keyring:
        """DATA_KEYS when given (first seals), else a key derived from SECRET_KEY. The derived
        key always opens, so moving from the default to your own keys is one rotate-key."""
        derived = derive(secret, DATA_KEY_PURPOSE)
        index = index_key if index_key is not None else derive(secret, INDEX_KEY_PURPOSE)
        return cls([*data_keys, derived], index_key=index)

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def merged(self, newer: Keyring) -> Keyring:
        """`newer` sealing, with this ring's keys still opening; the blind-index key stays
        (indexes already written with it must keep matching)."""
        ring = Keyring.__new__(Keyring)
        ring._keys = {**self._keys, **newer._keys}
        ring.current = newer.current
        ring._index_key = self._index_key
        return ring

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(NONCE)
        kid = self.current
        sealed = self._keys[kid].encrypt(nonce, plaintext.encode(), _aad(kid, context))
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{VERSION}:{kid}:{body}"

    def open(self, token: str, *, context: str) -> str:
        version, kid, body = _split(token)
        if version != VERSION:
            raise SealError(f"{context}: unknown format {version!r}")
        aead = self._keys.get(kid)
        if aead is None:
            raise SealError(f"{context}: sealed under key {kid}, which is not in DATA_KEYS")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return aead.decrypt(raw[:NONCE], raw[NONCE:], _aad(kid, context)).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SealError(f"{context}: altered or misplaced ciphertext") from None

    def seal_bytes(self, data: bytes, *, context: str) -> bytes:
        """Bytes (a file) sealed: `v1:<key id>:` then nonce | ciphertext | tag, raw."""
        nonce = os.urandom(NONCE)
        kid = self.current
        sealed = self._keys[kid].encrypt(nonce, data, _aad(kid, context))
        return f"{VERSION}:{kid}:".encode() + nonce + sealed

    def open_bytes(self, blob: bytes, *, context: str) -> bytes:
        parts = bytes(blob).split(b":", 2)
        if len(parts) != 3 or parts[0] != VERSION.encode():
            raise SealError(f"{context}: not a sealed file")
        kid = parts[1].decode("ascii", errors="replace")
        aead = self._keys.get(kid)
        if aead is None:
            raise SealError(f"{context}: sealed under key {kid}, which is not in DATA_KEYS")
        raw = parts[2]
        try:
            return aead.decrypt(raw[:NONCE], raw[NONCE:], _aad(kid, context))
        except (InvalidTag, ValueError):
            raise SealError(f"{context}: altered or misplaced file") from None

    def needs_reseal(self, token: str | None) -> bool:
        """True when a stored value is sealed under a key other than the current one."""
        return token is not None and _split(token)[1] != self.current

    def blind_index(self, value: str) -> str:
        """The keyed hash that stands for `value` in lookups and unique constraints."""
        return hmac.new(self._index_key, value.encode(), hashlib.sha256).hexdigest()

    def blind_indexes(self, values: Iterable[str]) -> list[str]:
        return [self.blind_index(value) for value in values]


def _aad(kid: str, context: str) -> bytes:
    return f"rightsdesk/{VERSION}/{kid}/{context}".encode()


def _split(token: str) -> tuple[str, str, str]:
    parts = token.split(":", 2)
    if len(parts) != 3:
        raise SealError("not a sealed value")
    return parts[0], parts[1], parts[2]


_keyring: Keyring | None = None


def configure(keyring: Keyring) -> Keyring:
    """Install the process's keyring; keys installed before keep opening what they sealed."""
    global _keyring
    _keyring = keyring if _keyring is None else _keyring.merged(keyring)
    return _keyring


def keyring() -> Keyring:
    if _keyring is None:
        raise KeyringNotConfigured(
            "the encryption keyring is not configured (run through `rightsdesk`, which reads "
            "DATA_KEYS / SECRET_KEY)"
        )
    return _keyring


def blind_index(value: str) -> str:
    return keyring().blind_index(value)


def blind_indexes(values: Iterable[str]) -> list[str]:
    return keyring().blind_indexes(values)


class SealedText(sa.TypeDecorator[str]):
    """A text column stored sealed; `context` names the column (`table.column`)."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, context: str) -> None:
        super().__init__()
        self.context = context

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else keyring().seal(value, context=self.context)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else keyring().open(value, context=self.context)


EMPTY = "{}"


class SealedJSON(sa.TypeDecorator[Any]):
    """A JSON value (a dict, usually) stored sealed as text; an empty dict stays `{}`."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, context: str) -> None:
        super().__init__()
        self.context = context

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if value == {}:
            return EMPTY  # nothing to hide; retention's "already cleared" test relies on it
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return keyring().seal(text, context=self.context)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value == EMPTY:
            return {}
        return json.loads(keyring().open(value, context=self.context))


# Every sealed column, as (table, column, JSON?): what rotate-key and the
# migration walk. Keep in step with the models.
SEALED_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("contact_identity", "value", False),
    ("ticket", "details", False),
    ("ticket_event", "data", True),
    ("conversation", "state", True),
    ("inbound_message", "payload", True),
    ("outbound_message", "payload", True),
    ("verification_code", "email", False),
    ("consent_record", "identity", False),
    ("conversation", "address", False),
    ("outbound_message", "recipient", False),
    ("suppression", "address", False),
    ("consent_record", "address", False),
    ("sandbox_chat", "address", False),
)
