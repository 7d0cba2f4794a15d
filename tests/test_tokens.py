"""Access and refresh tokens, from the outside: the JWT forgery matrix, key rotation, refresh
rotation with reuse detection, log-out, password change, and how refresh tokens are stored.

Forged tokens are built with pyjwt and cryptography directly. The one real key the tests sign
with is derived the way ``KeySet.from_config(SECRET, ())`` derives it, and checked against the
published JWKS; every claim is built here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar.testing import AsyncTestClient
from litestar.testing import transport as litestar_transport

from kernel.identity.tokens import KeySet
from kernel.settings import Settings
from tests.conftest import SECRET, _dsn, new_tenant, open_client, settings_for

ISSUER, AUDIENCE = "businessos", "businessos-api"
REQUIRED = ("iss", "aud", "exp", "iat", "sub", "tid", "jti")

# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client that adds no credentials of its own: every header is the test's."""
    async with open_client(settings) as client:
        client.event_hooks = {"request": [], "response": []}
        yield client


def real_key() -> Ed25519PrivateKey:
    """The signing key of an app configured with the test secret and no BUSINESSOS_JWT_KEYS."""
    key: Ed25519PrivateKey = KeySet.from_config(SECRET, ())._signing
    return key


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(user_id: str, tenant_id: str, **changes: Any) -> dict[str, Any]:
    """Access-token claims as the kernel issues them; ``changes`` overrides (``None`` removes)."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "tid": tenant_id,
        "role": "owner",
        "amr": ["pwd"],
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def sign(
    payload: dict[str, Any], key: Any = None, *, alg: str = "EdDSA", headers: dict[str, Any] | None = None
) -> str:
    return jwt.encode(
        payload, key or real_key(), algorithm=alg, headers={"kid": "k1"} if headers is None else headers
    )


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])


def ed25519_raw(header: dict[str, Any], payload: dict[str, Any], key: Ed25519PrivateKey | None = None) -> str:
    """Signed by hand, for headers pyjwt will not write (a kid that is not a string)."""
    head, body = b64(json.dumps(header).encode()), b64(json.dumps(payload).encode())
    return f"{head}.{body}.{b64((key or real_key()).sign(f'{head}.{body}'.encode()))}"


def hs256(payload: dict[str, Any], secret: bytes, header: dict[str, Any] | None = None) -> str:
    """HS256 by hand (pyjwt refuses PEM-looking HMAC secrets, which is exactly the attack)."""
    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def with_payload(token: str, **changes: Any) -> str:
    """The token with its payload edited and its signature kept."""
    head, body, sig = token.split(".")
    payload = json.loads(unb64(body))
    payload.update(changes)
    return ".".join([head, b64(json.dumps(payload).encode()), sig])


def flip_signature_byte(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(unb64(sig))
    raw[len(raw) // 2] ^= 0x01
    return ".".join([head, body, b64(bytes(raw))])


def bearer(tenant: dict[str, Any] | None, token: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if tenant is not None:
        headers["X-Tenant-ID"] = tenant["slug"]
    return headers


def unauthorized(response: Any) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    body: dict[str, Any] = response.json()
    assert body["status"] == 401 and body["type"] and body["title"]
    return body


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def me(api: AsyncTestClient[Any], token: str, tenant: dict[str, Any] | None = None) -> Any:
    return await api.get("/api/auth/me", headers=bearer(tenant, token))


async def refresh(api: AsyncTestClient[Any], token: str) -> Any:
    return await api.post("/api/auth/refresh", json={"refresh_token": token})


async def login(
    api: AsyncTestClient[Any], email: str, pw: str, tenant: dict[str, Any] | None = None
) -> dict[str, Any]:
    headers = {"X-Tenant-ID": tenant["slug"]} if tenant else {}
    response = await api.post("/api/auth/login", json={"email": email, "password": pw}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def join(
    api: AsyncTestClient[Any],
    tenant: dict[str, Any],
    role: str,
    email: str | None = None,
    pw: str | None = None,
) -> dict[str, Any]:
    """Invite (as the tenant's owner) and register; an existing account gives its password."""
    email = email or f"{role}-{uuid.uuid4().hex[:10]}@example.com"
    pw = pw or f"pw-{uuid.uuid4().hex}"
    response = await api.post(
        "/api/tenant/invitations",
        json={"email": email, "role": role},
        headers=bearer(tenant, tenant["access_token"]),
    )
    assert response.status_code == 201, response.text
    response = await api.post(
        "/api/auth/register",
        json={"email": email, "password": pw, "invitation_token": response.json()["token"]},
        headers={"X-Tenant-ID": tenant["slug"]},
    )
    assert response.status_code == 201, response.text
    return {"email": email, "password": pw, **response.json()}


async def owner_fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


# --- the forgery matrix ------------------------------------------------------------------------------


async def test_the_real_key_is_the_published_one(api: AsyncTestClient[Any]) -> None:
    jwks = (await api.get("/.well-known/jwks.json")).json()["keys"]
    raw = real_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert [(k["kid"], k["alg"], k["x"]) for k in jwks] == [("k1", "EdDSA", b64(raw))]
    assert not any("d" in k for k in jwks)  # never the private part


async def test_forged_and_tampered_access_tokens_are_refused(api: AsyncTestClient[Any]) -> None:
    a, b = await new_tenant(api, "jwt-a"), await new_tenant(api, "jwt-b")
    member = await join(api, a, "member")
    user_id, b_owner = a["user_id"], b["user_id"]
    good = claims(user_id, a["id"])

    # Control: tokens built here with the real key are accepted, so each refusal below is for the
    # one thing that differs.
    for control in (sign(good), ed25519_raw({"alg": "EdDSA", "kid": "k1"}, good)):
        response = await me(api, control, a)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == user_id and response.json()["role"] == "owner"
    real_token = a["access_token"]
    assert (await me(api, real_token, a)).status_code == 200

    public = real_key().public_key()
    public_raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    public_pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    attacker = Ed25519PrivateKey.generate()
    attacker_x = b64(attacker.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())

    forged: dict[str, str] = {
        # No signature at all.
        "alg none": raw_token({"alg": "none", "typ": "JWT", "kid": "k1"}, good),
        "alg None": raw_token({"alg": "None", "kid": "k1"}, good),
        "alg NONE, a signature kept": raw_token({"alg": "NONE", "kid": "k1"}, good, b"x" * 64),
        "no alg": raw_token({"kid": "k1"}, good, b"x" * 64),
        # Algorithm confusion: HMAC keyed with what is public, or with guesses.
        "HS256 with the raw public key": hs256(good, public_raw),
        "HS256 with the PEM public key": hs256(good, public_pem),
        "HS256 with the JWKS x": hs256(good, b64(public_raw).encode()),
        "HS256 with the app secret": hs256(good, SECRET.encode()),
        "HS256 with 'secret'": hs256(good, b"secret"),
        "HS256 with an empty secret": hs256(good, b""),
        "HS512 header": jwt.encode(good, "secret" * 12, algorithm="HS512", headers={"kid": "k1"}),
        # Other asymmetric algorithms, with our kid.
        "RS256": sign(good, rsa_key, alg="RS256"),
        "RS256 with an embedded jwk": sign(
            good, rsa_key, alg="RS256", headers={"kid": "k1", "jwk": {"kty": "RSA"}}
        ),
        "ES256": sign(good, ec_key, alg="ES256"),
        "PS256": sign(good, rsa_key, alg="PS256"),
        "eddsa in lower case": raw_token({"alg": "eddsa", "kid": "k1"}, good, b"x" * 64),
        # EdDSA, but not our key.
        "EdDSA by another key": sign(good, attacker),
        "EdDSA by another key, jwk embedded": sign(
            good, attacker, headers={"kid": "k1", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": attacker_x}}
        ),
        "EdDSA by another key, jku": sign(
            good, attacker, headers={"kid": "k1", "jku": "https://evil.example/jwks"}
        ),
        # Our key, wrong claims.
        "wrong aud": sign(claims(user_id, a["id"], aud="another-api")),
        "aud of the MFA step": sign(claims(user_id, a["id"], aud="businessos-mfa")),
        "aud as a list of others": sign(claims(user_id, a["id"], aud=["x", "y"])),
        "wrong iss": sign(claims(user_id, a["id"], iss="evil")),
        "iss of another case": sign(claims(user_id, a["id"], iss="BusinessOS")),
        "expired": sign(claims(user_id, a["id"], iat=now - 3600, exp=now - 60)),
        "not valid yet": sign(claims(user_id, a["id"], nbf=now + 3600)),
        "exp not a number": sign(claims(user_id, a["id"], exp="tomorrow")),
        "sub not a uuid": sign(claims("admin", a["id"])),
        "tid not a uuid": sign(claims(user_id, a["slug"])),
        "a user of another tenant": sign(claims(b_owner, a["id"])),
        "a tenant the user is not in": sign(claims(user_id, b["id"])),
        "a tenant that does not exist": sign(claims(user_id, str(uuid.uuid4()))),
        "a user that does not exist": sign(claims(str(uuid.uuid4()), a["id"])),
        # Key ids.
        "unknown kid": sign(good, headers={"kid": "k9"}),
        "missing kid": sign(good, headers={}),
        "empty kid": sign(good, headers={"kid": ""}),
        "null kid": ed25519_raw({"alg": "EdDSA", "kid": None}, good),
        "kid as a list": ed25519_raw({"alg": "EdDSA", "kid": ["k1"]}, good),
        "kid as a number": ed25519_raw({"alg": "EdDSA", "kid": 1}, good),
        "kid path traversal": sign(good, headers={"kid": "../../k1"}),
        # Signatures.
        "a flipped signature byte": flip_signature_byte(real_token),
        "a truncated signature": real_token[:-10],
        "no signature": real_token.rsplit(".", 1)[0] + ".",
        "signature of another token": ".".join(
            [*real_token.split(".")[:2], member["access_token"].split(".")[2]]
        ),
        # Payload edited, signature kept.
        "tid changed": with_payload(real_token, tid=b["id"]),
        "sub changed": with_payload(member["access_token"], sub=user_id),
        "role raised": with_payload(member["access_token"], role="owner"),
        "exp extended": with_payload(real_token, exp=now + 10 * 365 * 86400),
        "aud changed": with_payload(real_token, aud="businessos-api "),
        # Garbage.
        "garbage": "garbage",
        "three dots": "a.b.c",
        "empty parts": "..",
        "four parts": real_token + ".x",
        "base64 of junk": ".".join(b64(os.urandom(30)) for _ in range(3)),
        "header not an object": ".".join([b64(b"[1,2]"), b64(b"{}"), b64(b"x")]),
        "payload not JSON": ".".join([b64(b'{"alg":"EdDSA","kid":"k1"}'), b64(b"\xff\xfe"), b64(b"x" * 64)]),
        "very long": "x" * 20_000,
    }
    for name in REQUIRED:
        forged[f"missing {name}"] = sign(claims(user_id, a["id"], **{name: None}))

    for name, token in forged.items():
        response = await me(api, token, a)
        assert response.status_code == 401, (name, response.status_code, response.text)
        unauthorized(response)
        # Without X-Tenant-ID too: the token itself is refused, not the tenant.
        assert (await me(api, token)).status_code == 401, name

    # Not a bearer token at all.
    for value in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", f"Token {real_token}", real_token):
        unauthorized(
            await api.get("/api/auth/me", headers={"Authorization": value, "X-Tenant-ID": a["slug"]})
        )
    # The real tokens still work after all that (nothing was cached wrongly).
    assert (await me(api, real_token, a)).status_code == 200
    assert (await me(api, member["access_token"], a)).json()["role"] == "member"


# --- key rotation ---------------------------------------------------------------------------------


def _seed() -> tuple[bytes, str]:
    raw = os.urandom(32)
    return raw, b64(raw)


async def test_key_rotation_accepts_the_old_key_and_signs_with_the_new(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.database_url and settings.redis_url
    old_raw, old = _seed()
    _, new = _seed()

    def app_settings(keys: str) -> Settings:
        assert settings.database_url and settings.redis_url
        return settings_for(settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_JWT_KEYS=keys)

    async with open_client(app_settings(f"k1:{old}")) as before:
        before.event_hooks = {"request": [], "response": []}
        tenant = await new_tenant(before, "rot")
        assert kid_of(tenant["access_token"]) == "k1"
        assert (await me(before, tenant["access_token"], tenant)).status_code == 200
        k1_token = tenant["access_token"]

    # A k1 token built here with the old seed: proves which key the app checks.
    old_key = Ed25519PrivateKey.from_private_bytes(old_raw)
    built_k1 = sign(claims(tenant["user_id"], tenant["id"]), old_key, headers={"kid": "k1"})
    default_k1 = sign(claims(tenant["user_id"], tenant["id"]))  # the secret-derived k1: another key

    async with open_client(app_settings(f"k2:{new},k1:{old}")) as after:
        after.event_hooks = {"request": [], "response": []}
        jwks = (await after.get("/.well-known/jwks.json")).json()["keys"]
        assert [k["kid"] for k in jwks] == ["k2", "k1"]
        for token in (k1_token, built_k1):
            response = await me(after, token, tenant)
            assert response.status_code == 200, response.text
        unauthorized(await me(after, default_k1, tenant))
        # The old key's tokens under the new kid are refused: kid picks the key, it is not a hint.
        unauthorized(
            await me(
                after, sign(claims(tenant["user_id"], tenant["id"]), old_key, headers={"kid": "k2"}), tenant
            )
        )
        # New tokens are signed by k2, from log-in and from refresh alike.
        pair = await login(after, tenant["email"], tenant["password"], tenant)
        assert kid_of(pair["access_token"]) == "k2"
        assert (await me(after, pair["access_token"], tenant)).status_code == 200
        rotated = await refresh(after, tenant["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        assert kid_of(rotated.json()["access_token"]) == "k2"
        k2_token = pair["access_token"]

    async with open_client(app_settings(f"k2:{new}")) as retired:
        retired.event_hooks = {"request": [], "response": []}
        unauthorized(await me(retired, k1_token, tenant))
        assert (await me(retired, k2_token, tenant)).status_code == 200


# --- refresh ----------------------------------------------------------------------------------------


async def test_refresh_rotates_and_a_replay_revokes_the_family(
    api: AsyncTestClient[Any], database_url: str
) -> None:
    tenant = await new_tenant(api, "refresh")
    other_session = await login(api, tenant["email"], tenant["password"], tenant)
    t1 = tenant["refresh_token"]
    assert t1.startswith("rt_")

    response = await refresh(api, t1)
    assert response.status_code == 200, response.text
    pair = response.json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    t2 = pair["refresh_token"]
    assert t2 != t1 and (await me(api, pair["access_token"], tenant)).status_code == 200

    # t1 again: refused, and the whole family with it (t2, which the thief may hold, too).
    unauthorized(await refresh(api, t1))
    unauthorized(await refresh(api, t2))
    rows = await owner_fetch(
        database_url,
        "select * from audit_logs where tenant_id = $1 and action = 'auth.refresh.reuse_detected'",
        uuid.UUID(tenant["id"]),
    )
    assert (
        len(rows) == 1 and rows[0]["result"] == "denied" and rows[0]["actor"] == f"user:{tenant['user_id']}"
    )
    # Another session of the same user is not that family: it still works.
    assert (await refresh(api, other_session["refresh_token"])).status_code == 200

    # Made-up and malformed refresh tokens.
    for bogus in (
        "rt_" + "A" * 71,
        t1[:-1] + ("a" if t1[-1] != "a" else "b"),
        "nonsense",
        t2.replace("rt_", "bos_"),
    ):
        unauthorized(await refresh(api, bogus))


async def test_concurrent_refreshes_of_one_token_yield_at_most_one_new_pair(
    api: AsyncTestClient[Any],
) -> None:
    """The async test client runs requests one by one; threads with their own (sync) clients on
    the same app make the requests really overlap in the app's event loop."""
    tenant = await new_tenant(api, "race")
    transport: Any = litestar_transport.TestClientTransport(client=api)
    # (No close(): the test transport has nothing to release, and no close method.)
    clients = [httpx.Client(transport=transport, base_url="http://testserver.local") for _ in range(4)]
    for _ in range(3):
        token = (await login(api, tenant["email"], tenant["password"], tenant))["refresh_token"]
        results = await asyncio.gather(
            *(asyncio.to_thread(c.post, "/api/auth/refresh", json={"refresh_token": token}) for c in clients)
        )
        # Exactly one wins (the row flips once); the others are refused (and, as replays, end the
        # family, so even the winner's new refresh token is revoked).
        assert sorted(r.status_code for r in results) == [200, 401, 401, 401], [r.text for r in results]


async def test_logout_ends_the_session_family(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "logout")
    first = await login(api, tenant["email"], tenant["password"], tenant)
    second = await login(api, tenant["email"], tenant["password"], tenant)
    rotated = (await refresh(api, first["refresh_token"])).json()

    # Log out the session whose (rotated) refresh token is given: its family ends, not the others.
    response = await api.post(
        "/api/auth/logout",
        json={"refresh_token": rotated["refresh_token"]},
        headers=bearer(tenant, rotated["access_token"]),
    )
    assert response.status_code == 200 and response.json()["sessions_ended"] == 1, response.text
    unauthorized(await refresh(api, rotated["refresh_token"]))
    unauthorized(await refresh(api, first["refresh_token"]))
    second_rotated = await refresh(api, second["refresh_token"])
    assert second_rotated.status_code == 200

    # Nobody logs out someone else's session.
    member = await join(api, tenant, "member")
    response = await api.post(
        "/api/auth/logout",
        json={"refresh_token": member["refresh_token"]},
        headers=bearer(tenant, tenant["access_token"]),
    )
    assert response.status_code == 200 and response.json()["sessions_ended"] == 0
    assert (await refresh(api, member["refresh_token"])).status_code == 200

    # Without a token: every session of the caller here.
    response = await api.post("/api/auth/logout", headers=bearer(tenant, tenant["access_token"]))
    assert response.status_code == 200 and response.json()["sessions_ended"] >= 2
    unauthorized(await refresh(api, second_rotated.json()["refresh_token"]))
    unauthorized(await refresh(api, tenant["refresh_token"]))
    # Logging out needs a signed-in caller.
    unauthorized(await api.post("/api/auth/logout", headers={"X-Tenant-ID": tenant["slug"]}))


async def test_a_password_change_ends_every_other_session(api: AsyncTestClient[Any]) -> None:
    a, b = await new_tenant(api, "pwchange-a"), await new_tenant(api, "pwchange-b")
    user = await join(api, a, "member")
    in_b = await join(api, b, "viewer", user["email"], user["password"])
    kept = await login(api, user["email"], user["password"], a)
    other = await login(api, user["email"], user["password"], a)
    new_pw = f"pw-{uuid.uuid4().hex}"
    headers = bearer(a, kept["access_token"])

    def change(current: str, new: str, keep: str | None = kept["refresh_token"]) -> Any:
        body = {"current_password": current, "new_password": new}
        if keep is not None:
            body["refresh_token"] = keep
        return api.post("/api/auth/password", json=body, headers=headers)

    response = await change(f"pw-{uuid.uuid4().hex}", new_pw)
    assert response.status_code == 403, response.text
    response = await change(user["password"], "password1")
    assert response.status_code == 422 and [e["field"] for e in response.json()["errors"]] == ["new_password"]
    response = await change(user["password"], user["password"])
    assert response.status_code == 422

    response = await change(user["password"], new_pw)
    assert response.status_code == 204, response.text
    # Every other session, here and in the other tenant, is over; the caller's own goes on.
    for ended in (other["refresh_token"], user["refresh_token"], in_b["refresh_token"]):
        unauthorized(await refresh(api, ended))
    assert (await refresh(api, kept["refresh_token"])).status_code == 200
    # The old password is gone, the new one works.
    assert (
        await api.post("/api/auth/login", json={"email": user["email"], "password": user["password"]})
    ).status_code == 401
    await login(api, user["email"], new_pw, b)


async def test_wrong_current_passwords_count_toward_the_lock_out(api: AsyncTestClient[Any]) -> None:
    """Checking the current password must not be a way around the log-in lock-out."""
    tenant = await new_tenant(api, "pwguess")
    user = await join(api, tenant, "member")
    headers = bearer(tenant, user["access_token"])
    for _ in range(5):
        response = await api.post(
            "/api/auth/password",
            json={"current_password": f"pw-{uuid.uuid4().hex}", "new_password": f"pw-{uuid.uuid4().hex}"},
            headers=headers,
        )
        assert response.status_code == 403, response.text
    locked = await api.post("/api/auth/login", json={"email": user["email"], "password": user["password"]})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    response = await api.post(
        "/api/auth/password",
        json={"current_password": user["password"], "new_password": f"pw-{uuid.uuid4().hex}"},
        headers=headers,
    )
    assert response.status_code == 429


async def test_refresh_tokens_are_stored_hashed(api: AsyncTestClient[Any], database_url: str) -> None:
    tenant = await new_tenant(api, "hashed")
    issued = [tenant["refresh_token"]]
    issued.append((await login(api, tenant["email"], tenant["password"], tenant))["refresh_token"])
    issued.append((await refresh(api, issued[-1])).json()["refresh_token"])
    rows = await owner_fetch(
        database_url,
        "select r::text as row, token_hash from refresh_tokens r where tenant_id = $1",
        uuid.UUID(tenant["id"]),
    )
    assert len(rows) == 3
    stored = " ".join(r["row"] for r in rows)
    for token in issued:
        secret_part = token[len("rt_") + 22 : -6]  # the random part, whatever its encoding
        assert token not in stored and secret_part not in stored
        assert token.encode().hex() not in stored and unb64(secret_part).hex() not in stored
    assert {bytes(r["token_hash"]) for r in rows} == {hashlib.sha256(t.encode()).digest() for t in issued}
