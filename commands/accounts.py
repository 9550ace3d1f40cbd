"""Accounts: what the account handlers (commands/handlers/accounts.py) and the purge
(commands/privacy.py) are made of: validation, the link and account SQL, lesson ownership
by the log, and the decisions appended to a user's lessons (docs/accounts.md).

* **Magic link.** A link is stored and mailed for any valid address (consuming it decides
  whether the address links to this user or to an existing account), so neither the answer
  nor its timing tells whether an address has an account. The token is 32 random bytes;
  only its sha256 is stored; it lasts 15 minutes and is consumed by one atomic UPDATE.
* **Consuming** links the email to the anonymous user who asked for the link, or, when the
  address already has an account, moves that user's lessons into it (`lesson.transferred`
  in each lesson's stream: who owns a lesson is read from the log) and merges the anonymous
  user (soft-deleted, purged later). The session rotates: the old token ends at once.
* **Deleting** is soft and immediate; the purge (docs/privacy.md) erases 30 days later.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from psycopg import AsyncConnection

from commands import assets, lesson_log
from commands.assets import ErasedAssets, ForgottenAssets
from commands.errors import Internal, InvalidInput, Unauthorized
from commands.lesson_model import LessonState, fold
from commands.sessions import Principal, hash_token
from eventstore import personal
from eventstore.database import Pool
from eventstore.errors import translate_errors
from eventstore.events import (
    DomainEvent,
    LessonDeleted,
    LessonErased,
    LessonTransferred,
)
from eventstore.ids import new_id
from eventstore.queries import load_queries
from eventstore.settings import Settings
from eventstore.store import EventMeta, EventStore, StoredEvent

_Q = load_queries(Path(__file__).parent / "sql" / "accounts.sql")

EMAIL_MAX = 254
# Deliberately plain: one @, something on both sides, a dot in the domain, no spaces. The
# mail itself is the real check.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{20,100}")


# ---- validation (pure) ---------------------------------------------------------------------


def validate_email(body: Any) -> str:
    """The `email` field of a magic-link request, normalised (trimmed, lower case)."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    unknown = sorted(set(body) - {"email"})
    if unknown:
        raise InvalidInput(unknown[0], "unknown field")
    raw = body.get("email")
    if not isinstance(raw, str):
        raise InvalidInput("email", "is required and must be a string")
    email = raw.strip().lower()
    if len(email) > EMAIL_MAX:
        raise InvalidInput("email", f"must be at most {EMAIL_MAX} characters")
    if not _EMAIL.fullmatch(email):
        raise InvalidInput("email", "is not an email address")
    return email


def safe_next(raw: str | None) -> str:
    """Where to send the browser after signing in: a same-site path, else `/`.

    Only a path on this site is allowed ("/library", "/lesson/01H…?x=1"): no scheme, no
    host, no protocol-relative `//evil.example`, no backslash tricks.
    """
    if not raw or len(raw) > 512 or not raw.startswith("/") or raw.startswith("//"):
        return "/"
    if "\\" in raw or any(ord(c) < 0x20 for c in raw):
        return "/"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc:
        return "/"
    return raw


def email_key(email: str) -> str:
    """The rate-limit key of an address: its sha256, so rate_buckets holds no email."""
    return hashlib.sha256(email.encode()).hexdigest()


# ---- the link --------------------------------------------------------------------------------


async def store_magic_link(pool: Pool, token: str, user_id: str, email: str, ttl_min: int) -> None:
    params = {"token_hash": hash_token(token), "user_id": user_id, "email": email}
    with translate_errors():
        async with pool.connection() as conn:
            await conn.execute(_Q["insert_magic_link"], {**params, "ttl_min": ttl_min})


@dataclass(frozen=True)
class Outcome:
    user_id: str
    session_id: str
    expires_at: datetime
    linked: bool  # the email was linked to the requester (no account had it)
    merged_from: str | None  # the anonymous user whose lessons move into the account


async def consume(
    conn: AsyncConnection[Any],
    token: str,
    current: Principal | None,
    new_token: str,
    settings: Settings,
) -> Outcome:
    """One transaction: consume the token, link or merge, rotate the session."""
    row = await (
        await conn.execute(_Q["consume_magic_link"], {"token_hash": hash_token(token)})
    ).fetchone()
    if row is None:
        raise Unauthorized("This sign-in link has expired or was already used. Ask for a new one.")
    requester_id, email = row
    # The work that moves is the requester's, never the clicking browser's: a link an
    # attacker asked for and sent to a student cannot pull the student's lessons into the
    # attacker's account. (A browser whose own anonymous user is another keeps that user.)
    base = await (await conn.execute(_Q["live_user"], {"user_id": requester_id})).fetchone()
    await conn.execute(_Q["free_deleted_email"], {"email": email})
    account = await (await conn.execute(_Q["account_by_email"], {"email": email})).fetchone()
    linked, merged_from = False, None
    if account is not None:
        target = account[0]
        if base is not None and base[0] != target and base[1] is None:
            merged_from = base[0]  # an anonymous user's work moves into the account
            await conn.execute(_Q["merge_user"], {"user_id": merged_from, "into": target})
            await personal.rekey(conn, merged_from, target)
    elif base is not None and base[1] is None:
        target, linked = base[0], True
        await conn.execute(_Q["set_email"], {"user_id": target, "email": email})
    else:  # the requester is gone, or signed in with another address: a new account
        target = new_id()
        await conn.execute(
            _Q["create_user"], {"user_id": target, "anon_id": new_id(), "email": email}
        )
    if current is not None:
        await conn.execute(_Q["end_session"], {"session_id": current.session_id})
    session_id = new_id()
    created = await (
        await conn.execute(
            _Q["create_session"],
            {
                "session_id": session_id,
                "user_id": target,
                "client_meta": orjson.dumps({"via": "magic_link"}).decode(),
                "token_hash": hash_token(new_token),
                "days": settings.session_days,
            },
        )
    ).fetchone()
    if created is None:  # an INSERT … RETURNING returns its row
        raise Internal("The new session was not created.")
    return Outcome(target, session_id, created[0], linked, merged_from)


# ---- lessons by owner, and what is appended to them ------------------------------------------


async def owned_lessons(pool: Pool, user_id: str) -> list[str]:
    """The lessons the user owns by the log (created by them or transferred to them)."""
    with translate_errors():
        async with pool.connection() as conn:
            rows = await (await conn.execute(_Q["owned_lessons"], {"user_id": user_id})).fetchall()
    return [r[0] for r in rows]


def decide_transfer(state: LessonState, from_user_id: str, to_user_id: str) -> list[DomainEvent]:
    """Move the lesson to its new owner, if it still is the old owner's. Pure."""
    if state.user_id != from_user_id:
        return []
    return [LessonTransferred(from_user_id, to_user_id)]


def decide_delete(state: LessonState) -> list[DomainEvent]:
    return [] if state.deleted else [LessonDeleted(reason="account_deleted")]


def decide_erase(events: Sequence[StoredEvent]) -> Callable[[LessonState], list[DomainEvent]]:
    """Erase once: a lesson already erased (a purge run again) gets nothing more."""
    done = any(e.type == LessonErased.TYPE for e in events)
    return lambda _state: [] if done else [LessonErased()]


async def append_to_lesson(
    store: EventStore,
    lesson_id: str,
    decide: Callable[[LessonState], list[DomainEvent]],
    meta: EventMeta,
    events: list[StoredEvent] | None = None,
) -> None:
    """Decide on the folded lesson and append, through the shared retry loop (a generator
    may be appending beats at the same time)."""
    state = fold(events, lesson_id=lesson_id) if events is not None else None
    if state is None:
        _, state = await lesson_log.read_lesson(store, lesson_id)
    busy = Internal("The lesson is too busy to change right now. Try again.", recoverable=True)
    await lesson_log.commit(store, state, decide, meta, on_conflict=busy)


# ---- deleting and purging --------------------------------------------------------------------


async def soft_delete(pool: Pool, user_id: str, lesson_ids: Sequence[str]) -> None:
    """The account's rows beside the log, at once (contracts §6: the cascade is app-side)."""
    with translate_errors():
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(_Q["soft_delete_user"], {"user_id": user_id})
            await conn.execute(_Q["soft_delete_sessions"], {"user_id": user_id})
            await conn.execute(_Q["soft_delete_assets"], {"lesson_ids": list(lesson_ids)})
            await conn.execute(_Q["drop_magic_links"], {"user_id": user_id})
            await conn.execute(_Q["drop_idempotency_keys"], {"user_id": user_id})


async def users_to_purge(pool: Pool, older_than_days: int) -> list[str]:
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(_Q["users_to_purge"], {"days": older_than_days})
            return [r[0] for r in await cur.fetchall()]


@dataclass(frozen=True)
class Forgotten:
    vault_rows: int
    cache_rows: int
    assets: ForgottenAssets


async def forget_user(
    pool: Pool,
    user_id: str,
    lesson_ids: Sequence[str],
    cache_keys: Sequence[str],
    erased_assets: ErasedAssets | None = None,
) -> Forgotten:
    """One transaction: the vault rows and every other row that could hold the user's data,
    asset rows included (their objects are queued; the caller deletes them after the
    commit, so no reader ever finds a row naming a missing object)."""
    with translate_errors():
        async with pool.connection() as conn, conn.transaction():
            forgotten = await personal.forget(conn, user_id, lesson_ids)
            gone = await assets.forget(conn, erased_assets or ErasedAssets(), list(lesson_ids))
            cur = await conn.execute(
                _Q["purge_rows"],
                {
                    "user_id": user_id,
                    "lesson_ids": list(lesson_ids),
                    "cache_keys": list(cache_keys),
                },
            )
            row = await cur.fetchone()
    return Forgotten(forgotten, int(row[0]) if row else 0, gone)
