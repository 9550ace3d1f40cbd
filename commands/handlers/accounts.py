"""The account use cases: ask for a sign-in link, sign in with it, delete the account, and
record the browser's analytics events (docs/accounts.md).

Each handler takes its command (commands/messages.py) and the dependencies built once at
start-up (commands/bootstrap.py) and returns an answer object; web/ parses and renders.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from commands import accounts, analytics
from commands.bootstrap import Deps
from commands.errors import Internal, OverQuota, Unauthorized
from commands.mailer import Message
from commands.messages import (
    Caller,
    ConsumeMagicLink,
    DeleteAccount,
    RecordClientEvents,
    RequestMagicLink,
)
from commands.ratelimit import Bucket, Scope, hit, ip_key
from commands.sessions import TOKEN_BYTES, Principal, authenticate, end_visit
from eventstore.errors import UniqueKeyTaken, translate_errors
from eventstore.events import OverQuotaHit
from eventstore.store import EventMeta, NewEvent

log = structlog.get_logger(__name__)

# ---- POST /v1/auth/magic-link ------------------------------------------------------------------


@dataclass(frozen=True)
class MagicLinkSent:
    """The same answer for every address (no enumeration)."""

    def json(self) -> dict[str, Any]:
        return {"message": "If that address can receive mail, a sign-in link is on its way."}


async def request_magic_link(cmd: RequestMagicLink, deps: Deps) -> MagicLinkSent:
    email = accounts.validate_email(cmd.body)
    await _limit(deps, cmd.caller, Scope.IP, ip_key(cmd.caller.client_ip))
    await _limit(deps, cmd.caller, Scope.EMAIL, accounts.email_key(email))
    token = secrets.token_urlsafe(TOKEN_BYTES)
    ttl = deps.settings.magic_link_ttl_min
    await accounts.store_magic_link(deps.pool, token, cmd.caller.user_id, email, ttl)
    link = f"{deps.settings.public_url}/v1/auth/consume?token={token}"
    text = (
        "Open this link to save your work on OmniTutor and see it on any device:\n\n"
        f"{link}\n\nIt works once, for {ttl} minutes. If you did not ask for it, ignore this "
        "mail.\n"
    )
    try:
        await deps.mailer.send(Message(email, "Your OmniTutor sign-in link", text, link))
    except Exception as e:  # any SDK or file error: the student may simply try again
        log.warning("sign-in mail not sent", mailer=deps.mailer.name, error=type(e).__name__)
        failed = "We could not send the mail. Try again in a minute."
        raise Internal(failed, recoverable=True) from e
    log.info("sign-in mail sent", mailer=deps.mailer.name)
    return MagicLinkSent()


async def _limit(deps: Deps, caller: Caller, scope: Scope, key: str) -> None:
    bucket, limits = Bucket.MAGIC_LINK, deps.limits
    decision = await hit(deps.pool, scope, key, bucket, limits.limit(scope, bucket), limits)
    if decision.admitted:
        return
    event = OverQuotaHit(str(scope), str(bucket), decision.retry_after_ms)
    await deps.store.append_unordered([NewEvent.of(event, caller.meta())])
    minutes = max(1, math.ceil(decision.retry_after_ms / 60_000))
    raise OverQuota(
        f"Too many sign-in mails · try in {minutes} min.",
        retry_after_ms=decision.retry_after_ms,
        details={"scope": str(scope), "bucket": str(bucket)},
    )


# ---- GET /v1/auth/consume ----------------------------------------------------------------------


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    token: str  # the new session's cookie value
    expires_at: datetime
    redirect_to: str
    linked: bool
    moved_lessons: int


async def consume_magic_link(cmd: ConsumeMagicLink, deps: Deps) -> SignedIn:
    token = cmd.token or ""
    if not accounts.TOKEN_SHAPE.fullmatch(token):
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
                outcome = await accounts.consume(conn, token, current, new_token, deps.settings)
    except UniqueKeyTaken:  # the same address linked by a racing click: nothing changed
        raise Unauthorized("This sign-in link is being used right now. Try it again.") from None
    moved = 0
    if outcome.merged_from is not None:
        meta = EventMeta(cmd.trace_id or None, outcome.user_id, outcome.session_id)
        old, new = outcome.merged_from, outcome.user_id
        for lesson_id in await accounts.owned_lessons(deps.pool, old):
            await accounts.append_to_lesson(
                deps.store, lesson_id, lambda s: accounts.decide_transfer(s, old, new), meta
            )
            moved += 1
    log.info("signed in by mail", linked=outcome.linked, moved_lessons=moved)
    return SignedIn(
        Principal(outcome.user_id, outcome.session_id, signed_in=True),
        new_token,
        outcome.expires_at,
        accounts.safe_next(cmd.next),
        outcome.linked,
        moved,
    )


# ---- DELETE /v1/account ------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountDeleted:
    lessons: int

    def json(self) -> dict[str, Any]:
        return {"deleted": True, "lessons": self.lessons}


async def delete_account(cmd: DeleteAccount, deps: Deps) -> AccountDeleted:
    """Soft-delete the caller's account at once (contracts §6); the purge erases it later."""
    user_id = cmd.caller.user_id
    lessons = await accounts.owned_lessons(deps.pool, user_id)
    await accounts.soft_delete(deps.pool, user_id, lessons)
    meta = cmd.caller.meta()
    for lesson_id in lessons:
        # Stop generation first: the owning process sees the abandoned lease at its next
        # renewal, this one at once.
        await deps.supervisor.leases.abandon(lesson_id)
        await deps.supervisor.stop_lesson(lesson_id)
        await accounts.append_to_lesson(deps.store, lesson_id, accounts.decide_delete, meta)
    log.info("account deleted", lessons=len(lessons))
    return AccountDeleted(len(lessons))


# ---- POST /v1/event ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEventsAccepted:
    accepted: int

    def json(self) -> dict[str, Any]:
        return {"accepted": self.accepted}


async def record_client_events(cmd: RecordClientEvents, deps: Deps) -> ClientEventsAccepted:
    """Validate the batch whole, append it, and end the visit on a tab-close beacon."""
    recorded = await analytics.record(
        cmd.caller, cmd.body, deps.pool, deps.store, deps.owned_lessons
    )
    if recorded.abandoned:  # lesson.abandon: the tab is closing, this visit is over
        await end_visit(deps.pool, cmd.caller.session_id)
    return ClientEventsAccepted(recorded.accepted)
