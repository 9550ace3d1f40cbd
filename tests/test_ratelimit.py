"""Rate limits: the sliding-window rule (pure, hypothesis) and admission under concurrency."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from commands import ratelimit
from commands.errors import OverQuota
from commands.ratelimit import Bucket, RateLimits, Scope, decide, ip_key, slice_start
from commands.sessions import Principal
from eventstore.store import EventMeta, EventStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 5, 10, 8, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
SLICE = WINDOW / 60


def simulate(offsets_s: list[int], limit: int) -> list[tuple[datetime, bool, int]]:
    """Feed requests at T0+offset through `decide`, keeping slices as the table would."""
    slices: Counter[datetime] = Counter()
    out = []
    for offset in sorted(offsets_s):
        now = T0 + timedelta(seconds=offset)
        d = decide(sorted(slices.items()), now, limit, WINDOW, SLICE)
        if d.admitted:
            slices[slice_start(now, SLICE)] += 1
        out.append((now, d.admitted, d.retry_after_ms))
    return out


@settings(max_examples=50, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 3 * 3600), min_size=1, max_size=60),
    limit=st.integers(1, 6),
)
def test_never_more_than_the_limit_in_any_window(offsets: list[int], limit: int) -> None:
    admitted = [t for t, ok, _ in simulate(offsets, limit) if ok]
    for t in admitted:
        in_window = [u for u in admitted if t - WINDOW < u <= t]
        assert len(in_window) <= limit


@settings(max_examples=50, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 2 * 3600), min_size=1, max_size=40),
    limit=st.integers(1, 5),
)
def test_retry_after_is_exactly_when_a_hit_fits_again(offsets: list[int], limit: int) -> None:
    slices: Counter[datetime] = Counter()
    for offset in sorted(offsets):
        now = T0 + timedelta(seconds=offset)
        d = decide(sorted(slices.items()), now, limit, WINDOW, SLICE)
        if d.admitted:
            slices[slice_start(now, SLICE)] += 1
            continue
        later = now + timedelta(milliseconds=d.retry_after_ms)
        assert decide(sorted(slices.items()), later, limit, WINDOW, SLICE).admitted
        just_before = later - timedelta(milliseconds=1)
        assert not decide(sorted(slices.items()), just_before, limit, WINDOW, SLICE).admitted


def test_the_sixth_within_the_hour_is_refused_and_the_hour_after_admitted() -> None:
    results = simulate([0, 60, 120, 180, 240, 300], limit=5)
    assert [ok for _, ok, _ in results] == [True] * 5 + [False]
    retry_ms = results[-1][2]
    # The first hit (slice 08:00-08:01) ages out at 09:01, 56 minutes after 08:05.
    assert retry_ms == 56 * 60 * 1000


def test_ip_keys() -> None:
    assert ip_key("203.0.113.9") == "203.0.113.9"
    assert ip_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")


async def test_thirty_concurrent_requests_admit_exactly_the_limit(
    pool: AsyncConnectionPool[Any],
) -> None:
    limits = RateLimits()
    decisions = await asyncio.gather(
        *(ratelimit.hit(pool, Scope.IP, "198.51.100.7", Bucket.PLAN, 5, limits) for _ in range(30))
    )
    assert sum(d.admitted for d in decisions) == 5
    assert all(d.retry_after_ms > 0 for d in decisions if not d.admitted)
    # Other keys and buckets have their own counters.
    other = await ratelimit.hit(pool, Scope.IP, "198.51.100.8", Bucket.PLAN, 5, limits)
    ask = await ratelimit.hit(pool, Scope.IP, "198.51.100.7", Bucket.ASK, 60, limits)
    assert other.admitted
    assert ask.admitted
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT sum(count) FROM rate_buckets WHERE key = '198.51.100.7' AND bucket = 'plan'"
            )
        ).fetchone()
    assert row == (5,)  # refused requests do not count


async def test_over_the_limit_raises_over_quota_and_appends_the_hit(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    limits = RateLimits(plan_anon=2, plan_user=3)
    anon = Principal("u-anon", "s-anon")
    meta = EventMeta(trace_id="req_t", user_id="u-anon", session_id="s-anon")

    async def plan(who: Principal, ip: str) -> None:
        await ratelimit.enforce(
            pool, store, bucket=Bucket.PLAN, principal=who, client_ip=ip, limits=limits, meta=meta
        )

    await plan(anon, "192.0.2.1")
    await plan(Principal("u-other", "s-other"), "192.0.2.1")  # same IP, another anon user
    with pytest.raises(OverQuota) as info:
        await plan(anon, "192.0.2.1")
    assert info.value.retry_after_ms is not None
    assert info.value.details == {"scope": "ip", "bucket": "plan"}
    # A signed-in user is limited per user, not per address.
    for _ in range(3):
        await plan(Principal("u-signed", "s-signed", signed_in=True), "192.0.2.1")
    with pytest.raises(OverQuota):
        await plan(Principal("u-signed", "s-signed", signed_in=True), "192.0.2.2")
    await store.sequence()
    hits = [e.payload async for e in store.read_all(type="over_quota.hit")]
    assert [(h["scope"], h["bucket"]) for h in hits] == [("ip", "plan"), ("user", "plan")]
    assert all(h["retry_after_ms"] > 0 for h in hits)


async def test_purge_keeps_live_slices(pool: AsyncConnectionPool[Any]) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO rate_buckets (scope, key, bucket, count, window_start) VALUES "
            "('ip', 'a', 'plan', 3, now() - interval '3 hours'), "
            "('ip', 'a', 'plan', 1, now() - interval '10 minutes')"
        )
    assert await ratelimit.purge_old(pool) == 1
    assert await ratelimit.purge_old(pool) == 0
