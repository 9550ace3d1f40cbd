"""Idempotency keys (contracts §3): a retried request runs once and replays its answer.

The key is claimed *before* the work runs, with one INSERT … ON CONFLICT: of any number of
concurrent requests with the same key exactly one gets the claim and runs; the others see
the claim and answer without running anything. (Look-up-then-insert would let every
concurrent request through the look-up and run the side effect many times.)

A key, per user, lives 24 h and is in one of two states:

* ``in_flight``: claimed, work running. A repeat gets :class:`Conflict` with
  ``recoverable=True`` and ``retry_after_ms``: retry shortly and you will get the answer.
  The claim carries a lease; if its process dies, a repeat of the *same* request may take the
  key over once the lease has run out (a claim is never taken over while its lease runs).
* ``done``: the status and body are stored. A repeat with the same request gets them back
  byte for byte; a different request gets :class:`Conflict` with ``recoverable=False``.

Work that fails with a server error, or with a recoverable refusal (over quota, model
throttled), *releases* the claim, so a retry with the same key runs again rather than
replaying a failure that has since gone away.

Scoping: the contract keeps ``idempotency_keys.key`` as the primary key, so the stored key is
namespaced ``"<user_id>:<client key>"`` (the ``user_id`` column is filled too). That keeps
the contract's table and constraint as they are, makes keys unique per user with the primary
key's own index, and means one user can neither collide with nor replay another's key.

The request hash is sha256 over the route (``"POST /v1/plan"``) and the canonical body
(orjson with sorted keys, so key order and whitespace do not matter). Hashing the route too
means a key reused on another endpoint is a conflict, not a replay of the wrong answer.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import orjson

from commands.errors import Conflict, Internal, InvalidInput
from eventstore.database import Pool
from eventstore.errors import translate_errors
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "idempotency.sql")

HEADER = "Idempotency-Key"
KEY_TTL = timedelta(hours=24)
# Longer than any request may run (plan generation included): a claim is only taken over
# after this, so a slow request is never run twice, and a dead one blocks its key at most
# this long.
IN_FLIGHT_LEASE = timedelta(minutes=5)
IN_FLIGHT_RETRY_MS = 1000
MAX_KEY_CHARS = 255
_CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class StoredResponse:
    """A finished request's answer, replayed as is for a repeat of the same request."""

    status_code: int
    body: bytes
    media_type: str


@dataclass(frozen=True)
class Claim:
    """This request owns the key: run the work, then `complete` or `release`."""

    key: str  # namespaced: "<user_id>:<client key>"
    token: str  # proves ownership; another claimer's complete/release cannot touch it


def validate_key(raw: str | None) -> str:
    """A client key: 1-255 visible ASCII characters (a UUID is typical)."""
    if raw is None or raw == "":
        raise InvalidInput(HEADER, "header is required on this endpoint")
    if len(raw) > MAX_KEY_CHARS:
        raise InvalidInput(HEADER, f"must be at most {MAX_KEY_CHARS} characters")
    if not all("!" <= c <= "~" for c in raw):
        raise InvalidInput(HEADER, "must be visible ASCII characters without spaces")
    return raw


def canonical_body(raw: bytes) -> bytes:
    """JSON bodies re-encoded with sorted keys; anything else (empty, not JSON) as is."""
    if not raw.strip():
        return b""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def request_hash(route: str, raw_body: bytes) -> str:
    digest = hashlib.sha256(route.encode())
    digest.update(b"\n")
    digest.update(canonical_body(raw_body))
    return digest.hexdigest()


def storage_key(user_id: str, key: str) -> str:
    return f"{user_id}:{key}"


async def claim(
    pool: Pool,
    user_id: str,
    key: str,
    req_hash: str,
    *,
    ttl: timedelta = KEY_TTL,
    lease: timedelta = IN_FLIGHT_LEASE,
) -> Claim | StoredResponse:
    """Claim `key` for this request, or return the stored answer of the same request.

    Raises Conflict (recoverable) while another request holds the key, and Conflict (not
    recoverable) when the key was used for a different request.
    """
    stored_key = storage_key(user_id, key)
    token = secrets.token_hex(16)
    params = {
        "key": stored_key,
        "user_id": user_id,
        "request_hash": req_hash,
        "token": token,
        "lease": lease,
        "ttl": ttl,
    }
    for _ in range(_CLAIM_ATTEMPTS):
        with translate_errors():
            async with pool.connection() as conn:
                row = await (await conn.execute(_Q["claim"], params)).fetchone()
                if row is not None and row[0] == token:
                    return Claim(stored_key, token)
                held = await (await conn.execute(_Q["lookup"], {"key": stored_key})).fetchone()
        if held is None:
            continue  # released or expired between the two statements: claim again
        held_hash, state, status_code, body, media_type, lease_left_ms = held
        if held_hash != req_hash:
            raise Conflict(
                f"{HEADER} {key!r} was already used for a different request; "
                "send a new key for a new request.",
                recoverable=False,
                details={"header": HEADER},
            )
        if state == "in_flight":
            raise Conflict(
                f"A request with {HEADER} {key!r} is still running; retry shortly for its answer.",
                recoverable=True,
                retry_after_ms=max(1, min(int(lease_left_ms), IN_FLIGHT_RETRY_MS)),
                details={"header": HEADER},
            )
        return StoredResponse(int(status_code), bytes(body), str(media_type))
    raise Internal("The idempotency key kept changing hands; try again.", recoverable=True)


async def complete(pool: Pool, claim: Claim, response: StoredResponse) -> bool:
    """Store the answer under the claim; False if the claim was no longer ours."""
    try:
        response_json: str | None = orjson.dumps(orjson.loads(response.body)).decode()
    except orjson.JSONDecodeError:
        response_json = None
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(
                _Q["complete"],
                {
                    "key": claim.key,
                    "token": claim.token,
                    "status_code": response.status_code,
                    "response_json": response_json,
                    "response_body": response.body,
                    "media_type": response.media_type,
                },
            )
            return await cur.fetchone() is not None


async def release(pool: Pool, claim: Claim) -> bool:
    """Give the key back so a retry can run; False if the claim was no longer ours."""
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(_Q["release"], {"key": claim.key, "token": claim.token})
            return await cur.fetchone() is not None


async def purge_expired(pool: Pool, batch: int = 5000) -> int:
    """Delete one batch of expired keys; returns how many went (0 when none are left)."""
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(_Q["purge_expired"], {"limit": batch})
            return cur.rowcount
