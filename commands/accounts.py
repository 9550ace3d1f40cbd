"""Accounts: the magic link, linking an email, deleting an account, purging it (docs/accounts.md).

* **Magic link.** Asking for one always gets the same answer, known address or not: both
  take the same path (a link is stored and mailed either way; consuming it decides whether
  the address links to this user or to an existing account), so neither the answer nor its
  timing tells whether an address has an account. The token is 32 random bytes; only its
  sha256 is stored; it lasts 15 minutes and is consumed by one atomic UPDATE.
* **Consuming** links the email to the anonymous user who asked for the link, or, when the
  address already has an account, moves that user's lessons into it (a `lesson.transferred` event
  in each lesson's stream: who owns a lesson is read from the log) and merges the anonymous
  user (soft-deleted, purged later). The session is rotated: the old token ends at once.
* **Deleting** an account is soft and immediate (users, sessions, assets; each lesson gets
  `lesson.deleted` and its generation stops); the purge (docs/privacy.md) erases it for good
  after 30 days.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from commands.errors import Internal, InvalidInput, OverQuota, Unauthorized
from commands.generation import Supervisor
from commands.mailer import Mailer, Message
from commands.ratelimit import Bucket, RateLimits, Scope, hit, ip_key
from commands.sessions import TOKEN_BYTES, Principal, authenticate, hash_token
from eventstore import personal
from eventstore.errors import UniqueKeyTaken, WrongExpectedSeq, translate_errors
from eventstore.events import (
    DomainEvent,
    LessonDeleted,
    LessonErased,
    LessonTransferred,
    OverQuotaHit,
)
from eventstore.ids import new_id
from eventstore.queries import load_queries
from eventstore.settings import Settings
from eventstore.store import EventMeta, EventStore, NewEvent

_Q = load_queries(Path(__file__).parent / "sql" / "accounts.sql")
log = structlog.get_logger(__name__)
Pool = AsyncConnectionPool[AsyncConnection[Any]]

EMAIL_MAX = 254
# Deliberately plain: one @, something on both sides, a dot in the domain, no spaces. The
# mail itself is the real check.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")
APPEND_RETRIES = 16
SENT_MESSAGE = (
    "If that address can receive mail, a sign-in link is on its way. It works for 15 minutes."
)


class Caller(Protocol):
    """Who asks (commands/messages.Caller has these fields)."""

    @property
    def user_id(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def client_ip(self) -> str: ...
    @property
    def trace_id(self) -> str: ...


class AccountDeps(Protocol):
    """What these use cases need (commands/bootstrap.Deps has these fields)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def pool(self) -> Pool: ...
    @property
    def store(self) -> EventStore: ...
    @property
    def mailer(self) -> Mailer: ...
    @property
    def supervisor(self) -> Supervisor: ...


def _meta(caller: Caller) -> EventMeta:
    return EventMeta(caller.trace_id or None, caller.user_id, caller.session_id)


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


def magic_link_limits(settings: Settings) -> RateLimits:
    return RateLimits(
        magic_link_ip=settings.limit_magic_link_ip_per_hour,
        magic_link_email=settings.limit_magic_link_email_per_hour,
    )


# ---- magic link ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestMagicLink:
    caller: Caller
    body: Any


@dataclass(frozen=True)
class MagicLinkSent:
    """The same answer for every address (no enumeration)."""

    def json(self) -> dict[str, Any]:
        return {"message": SENT_MESSAGE}


async def request_magic_link(cmd: RequestMagicLink, deps: AccountDeps) -> MagicLinkSent:
    email = validate_email(cmd.body)
    limits = magic_link_limits(deps.settings)
    await _limit(deps, cmd.caller, Scope.IP, ip_key(cmd.caller.client_ip), limits)
    await _limit(deps, cmd.caller, Scope.EMAIL, email_key(email), limits)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    params = {
        "token_hash": hash_token(token),
        "user_id": cmd.caller.user_id,
        "email": email,
        "ttl_min": deps.settings.magic_link_ttl_min,
    }
    with translate_errors():
        async with deps.pool.connection() as conn:
            await conn.execute(_Q["insert_magic_link"], params)
    link = f"{deps.settings.public_url}/v1/auth/consume?token={token}"
    message = Message(
        to=email,
        subject="Your OmniTutor sign-in link",
        text=(
            "Open this link to save your work on OmniTutor and see it on any device:\n\n"
            f"{link}\n\nIt works once, for {deps.settings.magic_link_ttl_min} minutes. "
            "If you did not ask for it, ignore this mail.\n"
        ),
        link=link,
    )
    try:
        await deps.mailer.send(message)
    except Exception as e:  # any SDK or file error: the student may simply try again
        log.warning("sign-in mail not sent", mailer=deps.mailer.name, error=type(e).__name__)
        raise Internal(
            "We could not send the mail. Try again in a minute.", recoverable=True
        ) from e
    log.info("sign-in mail sent", mailer=deps.mailer.name)
    return MagicLinkSent()


async def _limit(
    deps: AccountDeps, caller: Caller, scope: Scope, key: str, limits: RateLimits
) -> None:
    bucket = Bucket.MAGIC_LINK
    decision = await hit(deps.pool, scope, key, bucket, limits.limit(scope, bucket), limits)
    if decision.admitted:
        return
    event = OverQuotaHit(str(scope), str(bucket), decision.retry_after_ms)
    await deps.store.append_unordered([NewEvent.of(event, _meta(caller))])
    minutes = max(1, -(-decision.retry_after_ms // 60_000))
    raise OverQuota(
        f"Too many sign-in mails · try in {minutes} min.",
        retry_after_ms=decision.retry_after_ms,
        details={"scope": str(scope), "bucket": str(bucket)},
    )


@dataclass(frozen=True)
class ConsumeMagicLink:
    token: str | None
    session_token: str | None  # the caller's cookie, if any
    next: str | None
    trace_id: str


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    token: str  # the new session's cookie value
    expires_at: datetime
    redirect_to: str
    linked: bool  # the email was linked to the anonymous user (not an existing account)
    moved_lessons: int  # lessons moved from the anonymous user into the account


async def consume_magic_link(cmd: ConsumeMagicLink, deps: AccountDeps) -> SignedIn:
    token = cmd.token or ""
    if not _TOKEN.fullmatch(token):
        raise Unauthorized("This sign-in link is not valid. Ask for a new one.")
    current: Principal | None = None
    if cmd.session_token:
        try:
            current = await authenticate(deps.pool, cmd.session_token)
        except Unauthorized:
            current = None
    new_token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        with translate_errors():
            async with deps.pool.connection() as conn, conn.transaction():
                outcome = await _consume(conn, token, current, new_token, deps.settings)
    except UniqueKeyTaken:  # the same address linked by a racing click: nothing changed
        raise Unauthorized("This sign-in link is being used right now. Try it again.") from None
    moved = 0
    if outcome.merged_from is not None:
        meta = EventMeta(cmd.trace_id or None, outcome.user_id, outcome.session_id)
        for lesson_id in await owned_lessons(deps.pool, outcome.merged_from):
            event = LessonTransferred(outcome.merged_from, outcome.user_id)
            await append_to_lesson(deps.store, lesson_id, event, meta)
            moved += 1
    log.info("signed in by mail", linked=outcome.linked, moved_lessons=moved)
    return SignedIn(
        Principal(outcome.user_id, outcome.session_id, signed_in=True),
        new_token,
        outcome.expires_at,
        safe_next(cmd.next),
        outcome.linked,
        moved,
    )


@dataclass(frozen=True)
class _Outcome:
    user_id: str
    session_id: str
    expires_at: datetime
    linked: bool
    merged_from: str | None


async def _consume(
    conn: AsyncConnection[Any],
    token: str,
    current: Principal | None,
    new_token: str,
    settings: Settings,
) -> _Outcome:
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
    assert created is not None  # INSERT … RETURNING one row
    return _Outcome(target, session_id, created[0], linked, merged_from)


# ---- lessons by owner ------------------------------------------------------------------------


async def owned_lessons(pool: Pool, user_id: str) -> list[str]:
    """The lessons the user owns by the log (created by them or transferred to them)."""
    with translate_errors():
        async with pool.connection() as conn:
            rows = await (await conn.execute(_Q["owned_lessons"], {"user_id": user_id})).fetchall()
    return [r[0] for r in rows]


async def append_to_lesson(
    store: EventStore, lesson_id: str, event: DomainEvent, meta: EventMeta
) -> None:
    """Append one event at the lesson's head, re-reading the head when a writer got there
    first (a generator may be appending beats at the same time)."""
    new = NewEvent.of(event, meta)
    for _ in range(APPEND_RETRIES):
        head = await store.lesson_head(lesson_id)
        try:
            await store.append(lesson_id, [new], expected_seq=head)
            return
        except WrongExpectedSeq:
            continue
    raise Internal("The lesson is too busy to change right now. Try again.", recoverable=True)


# ---- deleting an account ------------------------------------------------------------------


@dataclass(frozen=True)
class DeleteAccount:
    caller: Caller


@dataclass(frozen=True)
class AccountDeleted:
    lessons: int

    def json(self) -> dict[str, Any]:
        return {"deleted": True, "lessons": self.lessons}


async def delete_account(cmd: DeleteAccount, deps: AccountDeps) -> AccountDeleted:
    """Soft-delete the caller's account at once (contracts §6); the purge erases it later."""
    user_id = cmd.caller.user_id
    lessons = await owned_lessons(deps.pool, user_id)
    with translate_errors():
        async with deps.pool.connection() as conn, conn.transaction():
            await conn.execute(_Q["soft_delete_user"], {"user_id": user_id})
            await conn.execute(_Q["soft_delete_sessions"], {"user_id": user_id})
            await conn.execute(_Q["soft_delete_assets"], {"lesson_ids": lessons})
            await conn.execute(_Q["drop_magic_links"], {"user_id": user_id})
            await conn.execute(_Q["drop_idempotency_keys"], {"user_id": user_id})
    meta = _meta(cmd.caller)
    for lesson_id in lessons:
        # Stop generation first: the owner sees the abandoned lease at its next renewal.
        await deps.supervisor.leases.abandon(lesson_id)
        await deps.supervisor.stop_lesson(lesson_id)
        await append_to_lesson(deps.store, lesson_id, LessonDeleted(reason="account_deleted"), meta)
    log.info("account deleted", lessons=len(lessons))
    return AccountDeleted(len(lessons))


# ---- purge (docs/privacy.md) -------------------------------------------------------------------


async def users_to_purge(pool: Pool, older_than_days: int) -> list[str]:
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(_Q["users_to_purge"], {"days": older_than_days})
            return [r[0] for r in await cur.fetchall()]


async def purge_user(
    pool: Pool, store: EventStore, user_id: str, cache_keys: Sequence[str], lessons: Sequence[str]
) -> tuple[int, int]:
    """Erase one deleted user: `lesson.erased` in each lesson, then the vault and every other
    row that could hold their data, in one transaction. Returns (vault rows, cache rows)."""
    meta = EventMeta(user_id=user_id)
    for lesson_id in lessons:
        await append_to_lesson(store, lesson_id, LessonErased(), meta)
    with translate_errors():
        async with pool.connection() as conn, conn.transaction():
            forgotten = await personal.forget(conn, user_id, lessons)
            cur = await conn.execute(
                _Q["purge_rows"],
                {"user_id": user_id, "lesson_ids": list(lessons), "cache_keys": list(cache_keys)},
            )
            row = await cur.fetchone()
    return forgotten, int(row[1]) if row else 0
