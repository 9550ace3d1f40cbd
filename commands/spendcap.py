"""The daily spend cap (contracts §10): no new generation once the day's budget is spent.

Checked before every plan and every generation start, before any model is called. New work
is refused with `over_quota` when any of these holds:

* today's spend (UTC day), summed from the `model_run.recorded` events so far, has reached
  the cap (`OMNITUTOR_DAILY_CAP_USD`, default 50);
* the `over_quota` service flag is on (`omnitutor spend flag on`, or the nightly job);
* the process was started with `OT_OVER_QUOTA=1`.

Lessons already streaming are not checked again and finish.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from commands.errors import OverQuota
from eventstore import flags
from eventstore.batching import Batcher
from eventstore.database import Pool, autocommit
from eventstore.errors import translate_errors
from eventstore.events import OverQuotaHit
from eventstore.store import EventMeta, EventStore, NewEvent, SpendTally, model_spend_since


@dataclass(frozen=True)
class SpendStatus:
    spent_usd: Decimal
    cap_usd: Decimal
    flag_on: bool
    flag_reason: str | None
    forced: bool  # OT_OVER_QUOTA=1 at start-up

    @property
    def full(self) -> bool:
        return self.forced or self.flag_on or self.spent_usd >= self.cap_usd

    @property
    def why(self) -> str:
        if self.forced:
            return "OT_OVER_QUOTA"
        if self.flag_on:
            return "flag"
        return "cap" if self.spent_usd >= self.cap_usd else "none"


def until_reset(now: datetime) -> timedelta:
    """Time until the next UTC midnight, when the day's spend starts from zero."""
    now = now.astimezone(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return midnight - now


def full_for_the_day(now: datetime) -> OverQuota:
    left = until_reset(now)
    hours = max(1, math.ceil(left / timedelta(hours=1)))
    return OverQuota(
        f"Tutor is full for the day · come back in {hours} hour{'s' if hours != 1 else ''}.",
        retry_after_ms=max(1, math.ceil(left / timedelta(milliseconds=1))),
        details={"scope": "global", "bucket": "spend"},
    )


async def spend_status(
    pool: Pool, cap_usd: Decimal, forced: bool = False, tally: SpendTally | None = None
) -> SpendStatus:
    """Today's spend and the flag; with `tally`, the spend from its running total."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with translate_errors():
        async with autocommit(pool) as conn:  # two reads: no transaction around them
            if tally is None:
                spent = await model_spend_since(conn, midnight)
            else:
                spent = await tally.spent(conn, midnight)
            flag, reason = await flags.get_flag(conn, flags.OVER_QUOTA)
    return SpendStatus(spent, cap_usd, flag, reason, forced)


class SpendChecks:
    """`spend_status` for a process's requests: the checks asked for while one is being read
    share the next read (eventstore/batching.py). Each still sees every spend and flag
    change committed before it asked: no read that began earlier is shared with it. The
    day's spend is a running total (SpendTally): a check reads only the model runs recorded
    since the last one, however busy the day has been."""

    def __init__(self, pool: Pool, cap_usd: Decimal) -> None:
        self.pool = pool
        self.cap_usd = cap_usd
        self._tally = SpendTally()  # read by one batch at a time (concurrency 1)
        self._reads: Batcher[str, SpendStatus] = Batcher(
            self._read, concurrency=1, name="spend-check"
        )

    async def status(self) -> SpendStatus:
        return await self._reads.get(TODAY)

    @property
    def reads(self) -> int:
        return self._reads.batches

    async def _read(self, keys: Sequence[str]) -> dict[str, SpendStatus]:
        status = await spend_status(self.pool, self.cap_usd, tally=self._tally)
        return dict.fromkeys(keys, status)

    async def aclose(self) -> None:
        await self._reads.aclose()


TODAY = "today"  # the one thing a spend check asks about


async def enforce(
    pool: Pool,
    store: EventStore,
    *,
    cap_usd: Decimal,
    forced: bool,
    meta: EventMeta,
    lesson_id: str | None = None,
    now: datetime | None = None,
    checks: SpendChecks | None = None,
) -> None:
    """Raise OverQuota (and append `over_quota.hit`) if the day's budget is used up; `checks`
    (the process's, for the same cap) shares the read with the checks made together."""
    if not forced:
        status = await (checks.status() if checks else spend_status(pool, cap_usd))
        if not status.full:
            return
    error = full_for_the_day(now or datetime.now(UTC))
    retry_after_ms = error.retry_after_ms or 0
    await store.append_unordered(
        [NewEvent.of(OverQuotaHit("global", "spend", retry_after_ms), meta)],
        lesson_id=lesson_id,
    )
    raise error


async def set_flag(pool: Pool, on: bool, reason: str | None = None) -> None:
    """Turn the over-quota flag on or off (by hand, or from the nightly spend job)."""
    with translate_errors():
        async with pool.connection() as conn:
            await flags.set_flag(conn, flags.OVER_QUOTA, on, reason)
