"""Password hashing (argon2id) and the policy a new password must meet."""

from __future__ import annotations

from collections.abc import Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kernel.errors import FieldError, Unprocessable

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "PasswordPolicy", "check_password_strength"]

MIN_LENGTH = 8
MAX_LENGTH = 128

# OWASP's argon2id floor is m=19 MiB, t=2, p=1; we sit above it.
_HASHER = PasswordHasher(time_cost=3, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16)
# Verifying against this keeps "unknown email" as slow as "wrong password".
_DUMMY_HASH = _HASHER.hash("an account that does not exist")


class PasswordPolicy:
    hasher = _HASHER

    @staticmethod
    def hash(password: str) -> str:
        return _HASHER.hash(password)

    @staticmethod
    def verify(stored: str | None, password: str) -> bool:
        """Constant-shape check: an absent hash still costs one argon2 verification."""
        try:
            return _HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    @staticmethod
    def needs_rehash(stored: str) -> bool:
        return _HASHER.check_needs_rehash(stored)


def check_password_strength(password: str, *, field: str = "password", context: Sequence[str] = ()) -> None:
    """Refuse short, overlong, common or guessable passwords (422 naming ``field``)."""
    problem = None
    if len(password) < MIN_LENGTH:
        problem = f"must be at least {MIN_LENGTH} characters"
    elif len(password) > MAX_LENGTH:
        problem = f"must be at most {MAX_LENGTH} characters"
    else:
        from zxcvbn import zxcvbn

        result = zxcvbn(password[:100], user_inputs=[c for c in context if c])
        if result["score"] < 3:
            hint = result["feedback"].get("warning") or "it is too easy to guess"
            problem = f"is too weak: {hint.rstrip('.')}"
    if problem:
        raise Unprocessable(f"{field} {problem}", errors=[FieldError(field=field, message=problem)])
