"""Idempotency keys (contracts §3): a retried request runs once and replays its answer.

The key is claimed *before* the work runs, with one INSERT … ON CONFLICT: of any number of
concurrent requests with the same key exactly one gets the claim and runs; the others see
the claim and answer without running anything. (Look-up-then-insert would let every
concurrent request through the look-up and run the side effect many times.)

A key, per user, lives 24 h and is in one of two states:

* ``in_flight``: claimed, work running. A repeat gets :class:`Conflict` with
  ``recoverable=True`` and ``retry_after_ms``: retry shortly and you will get the answer.
  The claim carries a short lease (IN_FLIGHT_LEASE) that its owner renews while the work
  runs (`renew`); if its process dies, a repeat of the *same* request takes the key over
  within seconds, once the lease has run out (never while it runs).
* ``done``: the status and body are stored. A repeat with the same request gets them back
  byte for byte; a different request gets :class:`Conflict` with ``recoverable=False``.

Work that fails with a server error, or with a recoverable refusal (over quota, model
throttled), *releases* the claim, so a retry with the same key runs again rather than
replaying a failure that has since gone away; so does a request refused before any work ran
(validation, routing, authentication): its key is not spent.

Across a crash: work whose effect is an append completes the claim *in the append's own
transaction* (`complete_in`, passed to `EventStore.append` as its `in_transaction` hook).
Either both commit or neither does, so a retry after a crash at any point finds the stored
answer or nothing done. The completion checks the claim token, so if the lease was lost
(the process stalled and another request took the key over) the append rolls back with
:class:`ClaimLost` and the work is never done twice.

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
from typing import Any

import orjson
from psycopg import AsyncConnection

from commands.errors import Conflict, Internal, InvalidInput
from eventstore.database import Pool
from eventstore.errors import translate_errors
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "idempotency.sql")

HEADER = "Idempotency-Key"
KEY_TTL = timedelta(hours=24)
# A dead process's keys are free again this long after its last renewal; a live one renews
# every LEASE_RENEW_S, so a slow request keeps its key however long it runs.
IN_FLIGHT_LEASE = timedelta(seconds=5)
LEASE_RENEW_S = 1.5
IN_FLIGHT_RETRY_MS = 1000
MAX_KEY_CHARS = 255
_CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class StoredResponse:
    """A finished request's answer, replayed as is for a repeat of the same request."""

    status_code: int
    body: bytes
    media_type: str


class ClaimLost(Conflict):
    """The claim's lease ran out and another request took the key over: do not commit."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"The request with {HEADER} {key!r} took too long and was taken over by a retry; "
            "retry shortly for its answer.",
            recoverable=True,
            retry_after_ms=IN_FLIGHT_RETRY_MS,
            details={"header": HEADER},
        )


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
    """JSON bodies re-encoded with sorted keys; anything else as is (empty, not JSON, or
    nested deeper than orjson re-encodes: the route refuses those, and the key with them)."""
    if not raw.strip():
        return b""
    try:
        return orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return raw


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


def _complete_params(claim: Claim, response: StoredResponse) -> dict[str, object]:
    try:
        response_json: str | None = orjson.dumps(orjson.loads(response.body)).decode()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        response_json = None
    return {
        "key": claim.key,
        "token": claim.token,
        "status_code": response.status_code,
        "response_json": response_json,
        "response_body": response.body,
        "media_type": response.media_type,
    }


async def complete(pool: Pool, claim: Claim, response: StoredResponse) -> bool:
    """Store the answer under the claim; False if the claim was no longer ours (or is
    already complete: work that completed it in its own transaction)."""
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(_Q["complete"], _complete_params(claim, response))
            return await cur.fetchone() is not None


async def complete_in(conn: AsyncConnection[Any], claim: Claim, response: StoredResponse) -> None:
    """Store the answer inside the caller's transaction (the one appending the work's
    events); raises ClaimLost, which rolls that transaction back, if the claim is gone."""
    cur = await conn.execute(_Q["complete"], _complete_params(claim, response))
    if await cur.fetchone() is None:
        raise ClaimLost(claim.key.split(":", 1)[1])


async def renew(pool: Pool, claim: Claim, lease: timedelta = IN_FLIGHT_LEASE) -> bool:
    """Extend the claim's lease; False once it is no longer an in-flight claim of ours."""
    with translate_errors():
        async with pool.connection() as conn:
            params = {"key": claim.key, "token": claim.token, "lease": lease}
            cur = await conn.execute(_Q["renew"], params)
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
