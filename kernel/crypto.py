"""Encryption of stored secrets: AES-256-GCM under a versioned master key.

A sealed value is ``v<version>:<base64(nonce || ciphertext || tag)>``. The caller binds context as
associated data (the tenant id for tenant secrets, the user id for a user's TOTP seed), so a
ciphertext copied into another tenant's row does not decrypt. Rotation re-seals under the newest
key; old keys stay configured until nothing uses them.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SecretBox", "SecretBoxError", "derive_key"]


class SecretBoxError(ValueError):
    """A sealed value could not be opened (unknown key version, tampering, wrong context)."""


def derive_key(secret: str, purpose: str, length: int = 32) -> bytes:
    """A key for one purpose, derived from the master secret with HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode()).derive(
        secret.encode()
    )


class SecretBox:
    def __init__(self, keys: dict[int, bytes]) -> None:
        if not keys:
            raise ValueError("at least one master key is required")
        self._keys = {version: AESGCM(key) for version, key in keys.items()}
        self.current = max(keys)

    @classmethod
    def from_secret(cls, secret: str, extra: tuple[tuple[int, bytes], ...] = ()) -> SecretBox:
        """Version 1 derived from the secret key, plus configured later versions."""
        return cls({1: derive_key(secret, "businessos secret box v1"), **dict(extra)})

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._keys[self.current].encrypt(nonce, plaintext.encode(), context.encode())
        return f"v{self.current}:" + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, token: str, context: str) -> str:
        version, _, body = token.partition(":")
        try:
            aead = self._keys[int(version.removeprefix("v"))]
            raw = base64.urlsafe_b64decode(body)
            return aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except Exception:
            raise SecretBoxError("sealed value cannot be opened") from None

    def needs_reseal(self, token: str) -> bool:
        return not token.startswith(f"v{self.current}:")
