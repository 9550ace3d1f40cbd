"""Anonymous sessions (contracts §6): a random token in a cookie, its sha256 at rest."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from commands.errors import InvalidInput, Unauthorized
from eventstore.batching import Batcher
from eventstore.database import autocommit
from eventstore.errors import translate_errors
from eventstore.ids import new_id
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "sessions.sql")
TOKEN_BYTES = 32
CLIENT_META_MAX_DEPTH = 8
CLIENT_META_MAX_BYTES = 4096


@dataclass(frozen=True)
class Principal:
    """Who is asking: an anonymous or signed-in user, through one session."""

    user_id: str
    session_id: str
    signed_in: bool = False


@dataclass(frozen=True)
class SessionGrant:
    principal: Principal
    token: str  # goes to the cookie; never stored
    expires_at: datetime
    created: bool  # False when an existing session was refreshed


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_meta_json(client_meta: dict[str, Any]) -> str:
    """`client_meta` as the jsonb text to store, or InvalidInput naming the field.

    Checked before encoding: orjson cannot re-encode more than 254 levels and jsonb refuses
    NUL in any key or string, and either would otherwise surface as a 500.
    """
    todo: list[tuple[object, str, int]] = [(client_meta, "client_meta", 1)]
    while todo:
        item, where, depth = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidInput(where, "must not contain NUL (U+0000)")
        elif isinstance(item, dict | list):
            if depth > CLIENT_META_MAX_DEPTH:
                raise InvalidInput(where, f"is nested deeper than {CLIENT_META_MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if "\x00" in key:
                        raise InvalidInput(where, "a key must not contain NUL (U+0000)")
                    todo.append((child, f"{where}.{key}", depth + 1))
            else:
                todo.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
    encoded = orjson.dumps(client_meta).decode()
    if len(encoded) > CLIENT_META_MAX_BYTES:
        raise InvalidInput("client_meta", f"must encode to at most {CLIENT_META_MAX_BYTES} bytes")
    return encoded


async def open_session(
    pool: AsyncConnectionPool[AsyncConnection[Any]],
    token: str | None,
    client_meta: dict[str, Any],
    days: int,
) -> SessionGrant:
    """Refresh the session behind `token`, or create an anonymous user and session."""
    meta_json = client_meta_json(client_meta)
    if token:
        with contextlib.suppress(Unauthorized):  # an ended visit gives way to a new one
            await authenticate(pool, token, days=days)
    with translate_errors():
        async with pool.connection() as conn:
            if token:
                cur = await conn.execute(
                    _Q["refresh_session"], {"token_hash": hash_token(token), "days": days}
                )
                row = await cur.fetchone()
                if row is not None:
                    user_id, session_id, expires_at, signed_in = row
                    return SessionGrant(
                        Principal(user_id, session_id, signed_in), token, expires_at, False
                    )
            new_token = secrets.token_urlsafe(TOKEN_BYTES)
            cur = await conn.execute(
                _Q["create_anonymous_session"],
                {
                    "user_id": new_id(),
                    "anon_id": new_id(),
                    "session_id": new_id(),
                    "client_meta": meta_json,
                    "token_hash": hash_token(new_token),
                    "days": days,
                },
            )
            created = await cur.fetchone()
    assert created is not None  # an INSERT … RETURNING of one row
    user_id, session_id, expires_at = created
    return SessionGrant(Principal(user_id, session_id), new_token, expires_at, True)


async def authenticate(
    pool: AsyncConnectionPool[AsyncConnection[Any]],
    token: str | None,
    *,
    days: int = 30,
    idle_min: int = 30,
) -> Principal:
    """The session behind `token`, its expiry slid; a visit that ended gives way to a new one
    of the same user (the cookie stays valid: a session row is one visit, the token the
    student's way back to their work)."""
    if not token:
        raise Unauthorized("No session. POST /v1/session first.")
    params = {"token_hash": hash_token(token), "days": days, "idle_min": idle_min}
    with translate_errors():
        async with autocommit(pool) as conn:  # each statement stands alone: one round trip
            for _ in range(2):
                row = await (await conn.execute(_Q["authenticate"], params)).fetchone()
                if row is None:
                    break
                user_id, session_id, signed_in, ended = row
                if not ended:
                    return Principal(user_id, session_id, signed_in)
                moved = await (
                    await conn.execute(
                        _Q["continue_session"],
                        {**params, "session_id": session_id, "new_session_id": new_id()},
                    )
                ).fetchone()
                if moved is not None:
                    return Principal(user_id, moved[0], signed_in)
    raise Unauthorized("Your session has expired. Refresh it and try again.")


class Authenticator:
    """`authenticate` for a process's requests, which share statements: every request that
    arrives while the previous lookup is in flight is answered by the next one (one
    statement for a reconnect storm's worth of cookies, eventstore/batching.py). A visit
    that ended takes the one-by-one path, which starts the new one."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        *,
        days: int = 30,
        idle_min: int = 30,
        concurrency: int = 2,
    ) -> None:
        self.pool = pool
        self.days = days
        self.idle_min = idle_min
        self._lookups: Batcher[str, tuple[Any, ...] | None] = Batcher(
            self._look_up, concurrency=concurrency, name="authenticate"
        )

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("No session. POST /v1/session first.")
        row = await self._lookups.get(hash_token(token))
        if row is None:
            raise Unauthorized("Your session has expired. Refresh it and try again.")
        user_id, session_id, signed_in, ended = row
        if ended:
            return await authenticate(self.pool, token, days=self.days, idle_min=self.idle_min)
        return Principal(user_id, session_id, signed_in)

    async def _look_up(self, token_hashes: Sequence[str]) -> dict[str, tuple[Any, ...] | None]:
        params = {"token_hashes": list(token_hashes), "days": self.days, "idle_min": self.idle_min}
        with translate_errors():
            async with autocommit(self.pool) as conn:
                rows = await (await conn.execute(_Q["authenticate_many"], params)).fetchall()
        found: dict[str, tuple[Any, ...] | None] = dict.fromkeys(token_hashes)
        for token_hash, *rest in rows:
            found[token_hash] = tuple(rest)
        return found

    @property
    def statements(self) -> int:
        """Look-up statements sent so far (one per batch)."""
        return self._lookups.batches

    async def aclose(self) -> None:
        await self._lookups.aclose()


async def end_visit(pool: AsyncConnectionPool[AsyncConnection[Any]], session_id: str) -> None:
    """The browser said goodbye (a lesson.abandon / tab-close beacon)."""
    with translate_errors():
        async with pool.connection() as conn:
            await conn.execute(_Q["end_visit"], {"session_id": session_id})


async def end_idle_sessions(
    pool: AsyncConnectionPool[AsyncConnection[Any]], idle_min: int, batch: int = 5000
) -> int:
    """Give sessions idle longer than `idle_min` their ended_at; one batch, returns how many."""
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(
                _Q["end_idle_sessions"], {"idle_min": idle_min, "limit": batch}
            )
            return cur.rowcount
