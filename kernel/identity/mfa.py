"""Second factor: TOTP (RFC 6238) with single-use recovery codes, and the log-in step that uses it.

- ``POST /api/auth/mfa/setup``: a new TOTP seed (160 bits, base32) and its ``otpauth://`` URI. The
  seed is stored sealed by the secret box (context ``user:<id>``); setting up again before enabling
  replaces it. Refused (409) once MFA is enabled.
- ``POST /api/auth/mfa/enable {code}``: turns MFA on and answers with ten recovery codes, shown
  this once and stored as SHA-256 (they carry 50 random bits each, so a plain hash suffices).
- ``POST /api/auth/mfa/recovery-codes {code}``: ten new recovery codes; the old ones stop working.
- ``POST /api/auth/mfa/disable {code}``: turns MFA off, dropping the seed and the recovery codes.
- ``POST /api/auth/mfa/verify {mfa_token, code}``: the second step of a log-in; a TOTP code or a
  recovery code for the ``mfa_token`` that ``POST /api/auth/login`` answered with.

TOTP: HMAC-SHA1, six digits, 30-second steps; the previous and the next step are accepted too
(clock skew). A step is accepted only if it is later than ``users.mfa_last_step``, which is raised
by a conditional ``UPDATE`` in the same statement, so a code is never accepted twice, not even by
two concurrent requests. The routes that change MFA need a current TOTP code (never a recovery
code); failed codes there are counted per user, and an ``mfa_token`` allows five attempts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from typing import Annotated, Any

import msgspec
import pyotp
from litestar import Request, post
from redis.asyncio import Redis
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit.log import RequestMeta, record
from kernel.context import Kernel
from kernel.crypto import SecretBox
from kernel.db.engine import Database
from kernel.db.models import uuid7
from kernel.errors import Conflict, FieldError, Forbidden, Unprocessable
from kernel.identity.auth import principal_of, request_meta
from kernel.identity.models import MembershipRow, RecoveryCodeRow, UserRow
from kernel.identity.permissions import AUTHENTICATED, PUBLIC
from kernel.identity.principal import Principal
from kernel.identity.schemas import TokenPair
from kernel.identity.service import MFA_TOKEN_TTL, IdentityService, LockedOut, Unauthorized, _Session
from kernel.tenants.models import TenantRow

__all__ = [
    "ISSUER",
    "MfaCode",
    "MfaService",
    "MfaSetup",
    "MfaVerify",
    "RecoveryCodes",
    "mfa_handlers",
    "totp_code",
]

log = logging.getLogger("businessos.identity.mfa")

ISSUER = "BusinessOS"
STEP_SECONDS = 30
DIGITS = 6
SKEW_STEPS = 1
RECOVERY_CODE_COUNT = 10
RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32: 5 bits a character
RECOVERY_CODE_CHARS = 10  # 50 bits
VERIFY_ATTEMPTS = 5
"""Codes tried per ``mfa_token``; the next attempt is refused (429) and the user logs in again."""
CODE_FAILURES = 5
"""Wrong codes a signed-in user may give to enable, disable or regenerate within the window."""
CODE_FAILURE_WINDOW = 15 * 60

_TOTP_SHAPE = re.compile(r"^[0-9]{6}$")
_RECOVERY_SHAPE = re.compile(rf"^[{RECOVERY_ALPHABET}]{{{RECOVERY_CODE_CHARS}}}$")

Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class MfaSetup(msgspec.Struct, frozen=True):
    secret: str
    """Base32 TOTP seed, for authenticator apps that do not read the URI (shown this once)."""
    otpauth_uri: str


class MfaCode(msgspec.Struct, forbid_unknown_fields=True):
    code: Code
    """A current six-digit TOTP code."""


class MfaVerify(msgspec.Struct, forbid_unknown_fields=True):
    mfa_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    code: Code
    """A current six-digit TOTP code, or an unused recovery code (``xxxxx-xxxxx``)."""


class RecoveryCodes(msgspec.Struct, frozen=True):
    recovery_codes: list[str]
    """Shown this once; each works once, in place of a TOTP code, to log in."""


def totp_code(secret: str, step: int) -> str:
    """The TOTP code of ``secret`` (base32) for time step ``step``."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step)


def _normalize(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def _matching_step(secret: str, code: str, now: float) -> int | None:
    """The latest step within the accepted skew whose code is ``code``."""
    if not _TOTP_SHAPE.match(code):
        return None
    current = int(now) // STEP_SECONDS
    for step in range(current + SKEW_STEPS, current - SKEW_STEPS - 1, -1):
        if hmac.compare_digest(totp_code(secret, step), code):
            return step
    return None


def _recovery_hash(normalized: str) -> bytes:
    return hashlib.sha256(normalized.encode()).digest()


def _new_recovery_codes() -> list[str]:
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_CHARS))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def _wrong_code(detail: str = "the code is wrong, expired or already used") -> Unprocessable:
    return Unprocessable(detail, errors=[FieldError("code", detail)])


class MfaService:
    def __init__(self, db: Database, redis: Redis, box: SecretBox, identity: IdentityService) -> None:
        self.db = db
        self.redis = redis
        self.box = box
        self.identity = identity

    @classmethod
    def of(cls, kernel: Kernel) -> MfaService:
        return cls(kernel.db, kernel.redis, kernel.box, kernel.identity)

    # -- helpers ------------------------------------------------------------------------------

    def _open(self, user_id: uuid.UUID, sealed: str) -> str:
        return self.box.open(sealed, context=f"user:{user_id}")

    async def _user(self, session: AsyncSession, user_id: uuid.UUID) -> UserRow:
        user: UserRow = (
            await session.execute(select(UserRow).where(UserRow.id == user_id))
        ).scalar_one()
        return user

    @staticmethod
    async def _claim_step(session: AsyncSession, user: UserRow, step: int, *, enabled: bool,
                          **values: Any) -> bool:
        """Raise ``mfa_last_step`` to ``step`` (and set ``values``) if no later step was used yet
        and the seed is still the one checked: exactly one of concurrent uses of a code wins."""
        result = await session.execute(
            update(UserRow)
            .where(
                UserRow.id == user.id,
                UserRow.mfa_last_step < step,
                UserRow.mfa_secret == user.mfa_secret,
                UserRow.mfa_enabled.is_(enabled),
            )
            .values(mfa_last_step=step, **values)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    async def _check_totp(self, session: AsyncSession, user: UserRow, code: str, *, enabled: bool,
                          **values: Any) -> bool:
        if user.mfa_secret is None:
            return False
        step = _matching_step(self._open(user.id, user.mfa_secret), _normalize(code), time.time())
        return step is not None and await self._claim_step(session, user, step, enabled=enabled, **values)

    @staticmethod
    async def _replace_recovery_codes(session: AsyncSession, user_id: uuid.UUID) -> list[str]:
        codes = _new_recovery_codes()
        await session.execute(delete(RecoveryCodeRow).where(RecoveryCodeRow.user_id == user_id))
        await session.execute(
            insert(RecoveryCodeRow),
            [{"id": uuid7(), "user_id": user_id, "code_hash": _recovery_hash(_normalize(c))} for c in codes],
        )
        return codes

    async def _audit(self, tenant_id: uuid.UUID, user_id: uuid.UUID, action: str, result: str,
                     meta: RequestMeta, details: dict[str, object] | None = None,
                     session: AsyncSession | None = None) -> None:
        if session is None:
            async with self.db.tenant(tenant_id) as own:
                await self._audit(tenant_id, user_id, action, result, meta, details, own)
            return
        await record(session, tenant_id=tenant_id, actor=f"user:{user_id}", action=action,
                     resource_type="user", resource_id=str(user_id), result=result, meta=meta,
                     details=details)

    def _failures_key(self, user_id: uuid.UUID) -> str:
        return f"bos:mfa:fail:{user_id}"

    async def _check_failures(self, user_id: uuid.UUID) -> None:
        key = self._failures_key(user_id)
        failures = int(await self.redis.get(key) or 0)
        if failures >= CODE_FAILURES:
            ttl = await self.redis.ttl(key)
            seconds = max(1, int(ttl)) if ttl and ttl > 0 else CODE_FAILURE_WINDOW
            raise LockedOut(f"too many wrong codes: try again in {seconds} s",
                            headers={"Retry-After": str(seconds)})

    async def _refuse(self, principal: Principal, user_id: uuid.UUID, action: str, meta: RequestMeta) -> None:
        key = self._failures_key(user_id)
        if await self.redis.incr(key) == 1:
            await self.redis.expire(key, CODE_FAILURE_WINDOW)
        await self._audit(principal.tenant_id, user_id, action, "failure", meta, {"reason": "wrong code"})

    async def _succeeded(self, user_id: uuid.UUID) -> None:
        await self.redis.delete(self._failures_key(user_id))

    # -- managing MFA (a signed-in user) ------------------------------------------------------

    async def setup(self, principal: Principal, meta: RequestMeta) -> MfaSetup:
        user_id = principal.user_id
        assert user_id is not None
        secret = pyotp.random_base32()  # 32 characters: 160 bits, as RFC 4226 recommends
        sealed = self.box.seal(secret, context=f"user:{user_id}")
        async with self.db.tenant(principal.tenant_id) as session:
            row = (
                await session.execute(
                    update(UserRow)
                    .where(UserRow.id == user_id, UserRow.mfa_enabled.is_(False))
                    .values(mfa_secret=sealed, mfa_last_step=0)
                    .returning(UserRow.email)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if row is None:
                raise Conflict("MFA is already enabled: disable it before setting it up again")
            await self._audit(principal.tenant_id, user_id, "auth.mfa.setup", "success", meta,
                              session=session)
        uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
            name=row.email, issuer_name=ISSUER
        )
        return MfaSetup(secret=secret, otpauth_uri=uri)

    async def enable(self, principal: Principal, code: str, meta: RequestMeta) -> RecoveryCodes:
        user_id = principal.user_id
        assert user_id is not None
        await self._check_failures(user_id)
        async with self.db.tenant(principal.tenant_id) as session:
            user = await self._user(session, user_id)
            if user.mfa_enabled:
                raise Conflict("MFA is already enabled")
            if user.mfa_secret is None:
                raise Conflict("MFA is not set up: call POST /api/auth/mfa/setup first")
            ok = await self._check_totp(session, user, code, enabled=False, mfa_enabled=True)
            if ok:
                codes = await self._replace_recovery_codes(session, user_id)
                await self._audit(principal.tenant_id, user_id, "auth.mfa.enable", "success", meta,
                                  {"issued": len(codes)}, session)
        if not ok:
            await self._refuse(principal, user_id, "auth.mfa.enable", meta)
            raise _wrong_code()
        await self._succeeded(user_id)
        return RecoveryCodes(codes)

    async def regenerate_recovery_codes(self, principal: Principal, code: str,
                                        meta: RequestMeta) -> RecoveryCodes:
        user_id = principal.user_id
        assert user_id is not None
        await self._check_failures(user_id)
        async with self.db.tenant(principal.tenant_id) as session:
            user = await self._user(session, user_id)
            if not user.mfa_enabled:
                raise Conflict("MFA is not enabled")
            ok = await self._check_totp(session, user, code, enabled=True)
            if ok:
                codes = await self._replace_recovery_codes(session, user_id)
                await self._audit(principal.tenant_id, user_id, "auth.mfa.recovery_codes", "success", meta,
                                  {"issued": len(codes)}, session)
        if not ok:
            await self._refuse(principal, user_id, "auth.mfa.recovery_codes", meta)
            raise _wrong_code()
        await self._succeeded(user_id)
        return RecoveryCodes(codes)

    async def disable(self, principal: Principal, code: str, meta: RequestMeta) -> None:
        user_id = principal.user_id
        assert user_id is not None
        await self._check_failures(user_id)
        async with self.db.tenant(principal.tenant_id) as session:
            user = await self._user(session, user_id)
            if not user.mfa_enabled:
                raise Conflict("MFA is not enabled")
            ok = await self._check_totp(session, user, code, enabled=True, mfa_enabled=False, mfa_secret=None)
            if ok:
                await session.execute(delete(RecoveryCodeRow).where(RecoveryCodeRow.user_id == user_id))
                await self._audit(principal.tenant_id, user_id, "auth.mfa.disable", "success", meta,
                                  session=session)
        if not ok:
            await self._refuse(principal, user_id, "auth.mfa.disable", meta)
            raise _wrong_code()
        await self._succeeded(user_id)

    # -- the log-in step ----------------------------------------------------------------------

    async def verify(self, mfa_token: str, code: str, meta: RequestMeta) -> TokenPair:
        """Tokens for a log-in that passed its password step, given its second factor."""
        user_id, tenant_id, jti = self.identity.read_mfa_token(mfa_token)
        attempts_key, done_key = f"bos:mfa:attempts:{jti}", f"bos:mfa:done:{jti}"
        if await self.redis.exists(done_key):
            raise Unauthorized("this MFA token was already used: log in again")
        attempts = await self.redis.incr(attempts_key)
        if attempts == 1:
            await self.redis.expire(attempts_key, MFA_TOKEN_TTL + 60)
        if attempts > VERIFY_ATTEMPTS:
            raise LockedOut("too many attempts for this log-in: log in again")
        normalized = _normalize(code)
        role: str | None = None
        method = "totp" if _TOTP_SHAPE.match(normalized) else "recovery_code"
        async with self.db.tenant(tenant_id) as session:
            user = (await session.execute(select(UserRow).where(UserRow.id == user_id))).scalar_one_or_none()
            if user is None or not user.mfa_enabled:
                raise Unauthorized("MFA is not enabled for this account any more: log in again")
            if method == "totp":
                ok = await self._check_totp(session, user, normalized, enabled=True)
            else:
                ok = _RECOVERY_SHAPE.match(normalized) is not None and (
                    await session.execute(
                        update(RecoveryCodeRow)
                        .where(
                            RecoveryCodeRow.user_id == user_id,
                            RecoveryCodeRow.code_hash == _recovery_hash(normalized),
                            RecoveryCodeRow.used_at.is_(None),
                        )
                        .values(used_at=func.now())
                        .returning(RecoveryCodeRow.id)
                        .execution_options(synchronize_session=False)
                    )
                ).first() is not None
            if ok:
                # Re-checked here, not trusted from the password step: the membership and the
                # tenant may have changed since. Raising rolls the code's use back.
                tenant = (
                    await session.execute(
                        select(TenantRow.slug, TenantRow.status).where(TenantRow.id == tenant_id)
                    )
                ).first()
                role = (
                    await session.execute(select(MembershipRow.role).where(MembershipRow.user_id == user_id))
                ).scalar_one_or_none()
                if tenant is None or role is None:
                    raise Unauthorized("you are no longer a member of this tenant")
                if tenant.status != "active":
                    raise Forbidden(f"tenant {tenant.slug!r} is {tenant.status}")
                if not await self.redis.set(done_key, "1", nx=True, ex=MFA_TOKEN_TTL + 60):
                    raise Unauthorized("this MFA token was already used: log in again")
                details: dict[str, object] = {"method": method}
                if method == "recovery_code":
                    details["unused_left"] = (
                        await session.execute(
                            select(func.count()).select_from(RecoveryCodeRow)
                            .where(RecoveryCodeRow.user_id == user_id, RecoveryCodeRow.used_at.is_(None))
                        )
                    ).scalar_one()
                await self._audit(tenant_id, user_id, "auth.mfa.verify", "success", meta, details, session)
        if not ok or role is None:
            await self._audit(tenant_id, user_id, "auth.mfa.verify", "failure", meta,
                              {"method": method, "attempt": attempts})
            raise Unauthorized("the code is wrong, expired or already used")
        return await self.identity.start_session(
            _Session(user_id, tenant_id, role, mfa=True), meta, "auth.login"
        )


# -- HTTP ---------------------------------------------------------------------------------------

Req = Request[Any, Any, Any]


def _signed_in_user(request: Req) -> Principal:
    principal = principal_of(request)
    if principal is None or principal.kind != "user":
        raise Forbidden("this action needs a signed-in user, not an API key")
    return principal


@post("/api/auth/mfa/setup", status_code=200, tags=["auth"], opt={"permission": AUTHENTICATED})
async def mfa_setup(request: Req, kernel: Kernel) -> MfaSetup:
    """Start setting up TOTP: a new secret and its otpauth URI (replaces one not yet enabled)."""
    return await MfaService.of(kernel).setup(_signed_in_user(request), request_meta(request))


@post("/api/auth/mfa/enable", status_code=200, tags=["auth"], opt={"permission": AUTHENTICATED})
async def mfa_enable(data: MfaCode, request: Req, kernel: Kernel) -> RecoveryCodes:
    """Turn MFA on with a current code; answers with ten recovery codes, shown this once."""
    return await MfaService.of(kernel).enable(_signed_in_user(request), data.code, request_meta(request))


@post("/api/auth/mfa/recovery-codes", status_code=200, tags=["auth"], opt={"permission": AUTHENTICATED})
async def mfa_recovery_codes(data: MfaCode, request: Req, kernel: Kernel) -> RecoveryCodes:
    """Ten new recovery codes (a current TOTP code required); the previous ones stop working."""
    return await MfaService.of(kernel).regenerate_recovery_codes(
        _signed_in_user(request), data.code, request_meta(request)
    )


@post("/api/auth/mfa/disable", status_code=204, tags=["auth"], opt={"permission": AUTHENTICATED})
async def mfa_disable(data: MfaCode, request: Req, kernel: Kernel) -> None:
    """Turn MFA off (a current TOTP code required); the secret and recovery codes are dropped."""
    await MfaService.of(kernel).disable(_signed_in_user(request), data.code, request_meta(request))


@post("/api/auth/mfa/verify", status_code=200, tags=["auth"],
      opt={"permission": PUBLIC, "rate_limit": "auth"})
async def mfa_verify(data: MfaVerify, request: Req, kernel: Kernel) -> TokenPair:
    """Finish a log-in that asked for MFA: the mfa_token and a TOTP or recovery code."""
    return await MfaService.of(kernel).verify(data.mfa_token, data.code, request_meta(request))


mfa_handlers = [mfa_setup, mfa_enable, mfa_recovery_codes, mfa_disable, mfa_verify]
