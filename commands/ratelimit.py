"""Rate limits (contracts §8): sliding-window counters in `rate_buckets`.

A window (an hour) is counted in slices (a minute each): every admitted request adds one to
its slice's row, and a request is admitted while the slices that still overlap the window
hold fewer hits than the limit. A slice counts until it lies wholly outside the window, so
the limit is never exceeded over any true window; a hit may count up to one slice longer
than exactly an hour.

Admission is read-then-write, so it runs under a transaction-level advisory lock per
(scope, key, bucket): 30 concurrent requests against a limit of 5 admit exactly 5. (Counting
then inserting at READ COMMITTED without it lets about 16 through.) Refused requests do not
count. Anonymous callers are limited per client IP (an IPv6 client per /64, the block one
subscriber gets), signed-in ones per user; the limits come from Settings.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from commands.errors import OverQuota
from commands.sessions import Principal
from eventstore.database import Pool
from eventstore.errors import translate_errors
from eventstore.events import OverQuotaHit
from eventstore.queries import load_queries, one_row
from eventstore.store import EventMeta, EventStore, NewEvent

_Q = load_queries(Path(__file__).parent / "sql" / "ratelimit.sql")
LOCK_NAMESPACE = 0x0717_0002
WINDOW = timedelta(hours=1)
SLICES_PER_WINDOW = 60
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Bucket(StrEnum):
    PLAN = "plan"
    ASK = "ask"
    VIZ = "viz"  # visualize, animate and make-me (generated assets)
    MAGIC_LINK = "magic_link"  # sign-in mail, limited per client IP and per email


class Scope(StrEnum):
    IP = "ip"
    USER = "user"
    EMAIL = "email"  # keyed by the address's sha256: no email is stored in rate_buckets


@dataclass(frozen=True)
class RateLimits:
    """Hits per window, by who is asking (contracts §8; configured in Settings)."""

    plan_anon: int = 5
    ask_anon: int = 60
    plan_user: int = 30
    ask_user: int = 300
    viz_anon: int = 20
    viz_user: int = 100
    magic_link_ip: int = 10
    magic_link_email: int = 5
    window: timedelta = WINDOW

    def limit(self, scope: Scope, bucket: Bucket) -> int:
        if bucket is Bucket.MAGIC_LINK:
            return self.magic_link_email if scope is Scope.EMAIL else self.magic_link_ip
        anon = scope is Scope.IP
        if bucket is Bucket.PLAN:
            return self.plan_anon if anon else self.plan_user
        if bucket is Bucket.VIZ:
            return self.viz_anon if anon else self.viz_user
        return self.ask_anon if anon else self.ask_user

    @property
    def slice(self) -> timedelta:
        return self.window / SLICES_PER_WINDOW


@dataclass(frozen=True)
class Decision:
    admitted: bool
    used: int  # hits in the window before this one
    retry_after_ms: int  # 0 when admitted


def slice_start(now: datetime, slice_len: timedelta) -> datetime:
    """The start of the slice `now` falls in (count_hit_if_room computes it with date_bin)."""
    return _EPOCH + ((now - _EPOCH) // slice_len) * slice_len


def decide(
    slices: Sequence[tuple[datetime, int]],
    now: datetime,
    limit: int,
    window: timedelta,
    slice_len: timedelta,
) -> Decision:
    """Admit one more hit or not, and when enough old hits will have aged out. Pure."""
    live = sorted((s, c) for s, c in slices if s + slice_len > now - window)
    used = sum(c for _, c in live)
    if used < limit:
        return Decision(True, used, 0)
    if limit <= 0:
        return Decision(False, used, _ms(window))
    must_age_out = used - limit + 1
    aged = 0
    for start, count in live:
        aged += count
        if aged >= must_age_out:
            return Decision(False, used, max(1, _ms(start + slice_len + window - now)))
    raise AssertionError("unreachable: the live hits add up to `used`")


def _ms(delta: timedelta) -> int:
    return math.ceil(delta / timedelta(milliseconds=1))


def ip_key(ip: str) -> str:
    """The rate-limit key of a client address: IPv4 as is, IPv6 by its /64."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an address (a test client's name): limit it by what it is
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


async def hit(
    pool: Pool, scope: Scope, key: str, bucket: Bucket, limit: int, limits: RateLimits
) -> Decision:
    """Count one hit against (scope, key, bucket) if it fits under `limit`.

    The lock, then one statement that reads the slices and counts the hit by the rule
    `decide` applies to them (count_hit_if_room), so the two agree.
    """
    params: dict[str, Any] = {
        "scope": str(scope),
        "key": key,
        "bucket": str(bucket),
        "window": limits.window,
        "slice": limits.slice,
        "limit": limit,
    }
    lock = {"namespace": LOCK_NAMESPACE, "lock_name": f"{scope}\x1f{key}\x1f{bucket}"}
    with translate_errors():
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(_Q["lock_bucket"], lock)
            cur = await conn.execute(_Q["count_hit_if_room"], params)
            now, starts, counts = await one_row(cur)
    return decide(list(zip(starts, counts, strict=True)), now, limit, limits.window, limits.slice)


async def enforce(
    pool: Pool,
    store: EventStore,
    *,
    bucket: Bucket,
    principal: Principal,
    client_ip: str,
    limits: RateLimits,
    meta: EventMeta,
    lesson_id: str | None = None,
) -> None:
    """Count this request, or append `over_quota.hit` and raise OverQuota (429)."""
    if principal.signed_in:
        scope, key = Scope.USER, principal.user_id
    else:
        scope, key = Scope.IP, ip_key(client_ip)
    decision = await hit(pool, scope, key, bucket, limits.limit(scope, bucket), limits)
    if decision.admitted:
        return
    await store.append_unordered(
        [NewEvent.of(OverQuotaHit(str(scope), str(bucket), decision.retry_after_ms), meta)],
        lesson_id=lesson_id,
    )
    minutes = max(1, math.ceil(decision.retry_after_ms / 60_000))
    raise OverQuota(
        f"Tutor is full · try in {minutes} min.",
        retry_after_ms=decision.retry_after_ms,
        details={"scope": str(scope), "bucket": str(bucket)},
    )


async def purge_old(pool: Pool, keep: timedelta = 2 * WINDOW, batch: int = 5000) -> int:
    """Delete one batch of slices older than `keep`; returns how many went."""
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(_Q["purge_old"], {"keep": keep, "limit": batch})
            return cur.rowcount
