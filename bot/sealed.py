"""Small secrets kept at rest for minutes (a code waiting in the outbox), sealed with AES-GCM
under a key derived from SECRET_KEY."""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A 256-bit key for one purpose, so one leak does not open everything."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        secret
    )


def seal(key: bytes, plaintext: str, *, context: str) -> str:
    """Encrypt and authenticate `plaintext`, bound to `context` (e.g. the outbox purpose)."""
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), context.encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(key: bytes, token: str, *, context: str) -> str:
    """The plaintext; raises cryptography's InvalidTag if the token was altered or misbound."""
    raw = base64.urlsafe_b64decode(token.encode())
    return AESGCM(key).decrypt(raw[:12], raw[12:], context.encode()).decode()
