"""Access tokens (JWT, EdDSA) and the opaque secrets we hand out (refresh tokens, API keys).

Why EdDSA (Ed25519) rather than HS256: verification needs only the public key, so another service
(or a gateway) can check our tokens without being able to mint them, and the key set can be
published; Ed25519 signatures are small and verify in tens of microseconds. The algorithm is
pinned: a token naming any other algorithm, or ``none``, is refused before its signature is read.

Opaque secrets carry the tenant id in clear (so the lookup can run under that tenant's row-level
security) followed by 32 random bytes; only their SHA-256 is stored.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
import zlib
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kernel.crypto import derive_key

__all__ = [
    "ACCESS_TTL",
    "AccessClaims",
    "KeySet",
    "OpaqueSecret",
    "TokenError",
    "digest",
]

ISSUER = "businessos"
AUDIENCE = "businessos-api"
ALGORITHM = "EdDSA"
ACCESS_TTL = 15 * 60
_REQUIRED = ["iss", "aud", "exp", "iat", "sub", "tid", "jti"]
_CACHE_SIZE = 50_000


class TokenError(Exception):
    """A presented token is not acceptable; the message is safe to show."""


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    jti: str
    expires_at: int
    mfa: bool


class KeySet:
    """Signing key (the first) and every key still accepted for verification, by ``kid``."""

    def __init__(self, keys: list[tuple[str, Ed25519PrivateKey]]) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        self.signing_kid, self._signing = keys[0]
        self._public: dict[str, Ed25519PublicKey] = {kid: key.public_key() for kid, key in keys}
        # An Ed25519 check costs ~0.4 ms through pyjwt here; a client reuses its token for minutes.
        self._verified: dict[str, AccessClaims] = {}

    @classmethod
    def from_config(cls, secret_key: str, configured: tuple[tuple[str, bytes], ...]) -> KeySet:
        """Keys from ``BUSINESSOS_JWT_KEYS`` (kid and 32-byte seed), else one derived from the secret."""
        if configured:
            return cls([(kid, Ed25519PrivateKey.from_private_bytes(seed)) for kid, seed in configured])
        seed = derive_key(secret_key, "businessos jwt signing key k1")
        return cls([("k1", Ed25519PrivateKey.from_private_bytes(seed))])

    def sign(self, claims: dict[str, object]) -> str:
        """Sign arbitrary claims with the current key (the caller sets ``aud`` and ``exp``)."""
        return jwt.encode(claims, self._signing, algorithm=ALGORITHM, headers={"kid": self.signing_kid})

    def decode(self, token: str, *, audience: str, required: list[str]) -> dict[str, object]:
        """Verify signature, algorithm, key id, audience and expiry; the claims, or ``TokenError``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError("token algorithm not accepted")
        key = self._public.get(str(header.get("kid")))
        if key is None:
            raise TokenError("token signed by an unknown key")
        try:
            claims: dict[str, object] = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=audience, options={"require": required}, leeway=5
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.PyJWTError:
            raise TokenError("invalid token") from None
        return claims

    def issue(
        self, *, user_id: uuid.UUID, tenant_id: uuid.UUID, role: str, mfa: bool, ttl: int = ACCESS_TTL
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "tid": str(tenant_id),
            "role": role,
            "amr": ["pwd", "otp"] if mfa else ["pwd"],
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        return self.sign(claims)

    def verify(self, token: str) -> AccessClaims:
        """Check a token; a token verified before is answered from a bounded cache until it expires."""
        cached = self._verified.get(token)
        if cached is not None and cached.expires_at > time.time():
            return cached
        claims = self._verify(token)
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> AccessClaims:
        claims = self.decode(token, audience=AUDIENCE, required=_REQUIRED)
        if claims.get("iss") != ISSUER:
            raise TokenError("invalid token")
        try:
            return AccessClaims(
                user_id=uuid.UUID(str(claims["sub"])),
                tenant_id=uuid.UUID(str(claims["tid"])),
                role=str(claims.get("role", "")),
                jti=str(claims["jti"]),
                expires_at=int(str(claims["exp"])),
                mfa="otp" in (claims.get("amr") or ()),  # type: ignore[operator]
            )
        except (ValueError, KeyError, TypeError):
            raise TokenError("invalid token") from None

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys, as a JSON Web Key Set."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        keys = []
        for kid, key in self._public.items():
            raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
            x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            keys.append({"kty": "OKP", "crv": "Ed25519", "alg": ALGORITHM, "use": "sig", "kid": kid, "x": x})
        return {"keys": keys}


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class OpaqueSecret:
    """``<kind>_<tenant, 22 chars><random, 43 chars><checksum, 6 chars>`` (checksum: CRC32, base-32)."""

    kind: str
    tenant_id: uuid.UUID
    value: str

    @classmethod
    def new(cls, kind: str, tenant_id: uuid.UUID) -> OpaqueSecret:
        body = _b64(tenant_id.bytes) + _b64(secrets.token_bytes(32))
        return cls(kind, tenant_id, f"{kind}_{body}{_checksum(body)}")

    @classmethod
    def parse(cls, kind: str, value: str) -> OpaqueSecret:
        """Check shape and checksum (cheap, before any database work)."""
        prefix = kind + "_"
        if not value.startswith(prefix) or len(value) != len(prefix) + 22 + 43 + 6:
            raise TokenError(f"not a {kind} token")
        body, check = value[len(prefix) : -6], value[-6:]
        if not secrets.compare_digest(_checksum(body), check):
            raise TokenError(f"{kind} token checksum mismatch")
        try:
            tenant_id = uuid.UUID(bytes=_unb64(body[:22]))
        except ValueError:
            raise TokenError(f"not a {kind} token") from None
        return cls(kind, tenant_id, value)

    @property
    def display_prefix(self) -> str:
        """What may be shown later to recognise the secret: the kind and a few characters."""
        return self.value[: len(self.kind) + 1 + 30]

    @property
    def hash(self) -> bytes:
        return digest(self.value)


def _checksum(body: str) -> str:
    return base64.b32encode(zlib.crc32(body.encode()).to_bytes(4, "big")).decode().rstrip("=").lower()[:6]
