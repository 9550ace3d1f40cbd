"""Daily spend: the nightly aggregate of model_runs, and the over-quota flag.

`aggregate` recomputes whole days (day × model × purpose) from model_runs, so running it
twice, or after a late model run, gives the same table; then it sets or clears the
`over_quota` service flag (eventstore/flags.py) by comparing today's spend (UTC) with the
daily cap; the guardrails refuse new generations while it is on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from eventstore import flags
from eventstore.database import Pool
from eventstore.errors import translate_errors
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "spend.sql")


@dataclass(frozen=True)
class DaySpend:
    day: date
    groups: int  # model × purpose rows written
    cost_usd: Decimal


@dataclass(frozen=True)
class AggregateResult:
    days: tuple[DaySpend, ...]
    today_usd: Decimal
    cap_usd: Decimal
    over_quota: bool


@dataclass(frozen=True)
class SpendRow:
    day: date
    model: str
    purpose: str
    runs: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


def today_utc(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(UTC).date()


def default_days(now: datetime | None = None) -> tuple[date, date]:
    """The nightly job's days: yesterday (now complete) and today so far."""
    today = today_utc(now)
    return today - timedelta(days=1), today


async def aggregate(
    pool: Pool, days: Iterable[date], cap_usd: Decimal, now: datetime | None = None
) -> AggregateResult:
    """Recompute the given days from model_runs, then set or clear the over-quota flag."""
    results = []
    today = today_utc(now)
    with translate_errors():
        async with pool.connection() as conn:
            for day in sorted(set(days)):
                async with conn.transaction():
                    await conn.execute(_Q["delete_day"], {"day": day})
                    cur = await conn.execute(_Q["aggregate_day"], {"day": day})
                    costs = [Decimal(r[0]) for r in await cur.fetchall()]
                results.append(DaySpend(day, len(costs), sum(costs, Decimal(0))))
            row = await (await conn.execute(_Q["spend_on"], {"day": today})).fetchone()
            today_usd = Decimal(row[0]) if row else Decimal(0)
            over = today_usd >= cap_usd
            reason = (
                f"spend on {today.isoformat()} is ${today_usd:.2f}, "
                f"{'at or over' if over else 'under'} the daily cap of ${cap_usd:.2f}"
            )
            await flags.set_flag(conn, flags.OVER_QUOTA, over, reason)
            await conn.commit()
    return AggregateResult(tuple(results), today_usd, cap_usd, over)


async def report(pool: Pool, days: int, today: date | None = None) -> list[SpendRow]:
    """The daily spend table for the last `days` days (today included), newest first."""
    with translate_errors():
        async with pool.connection() as conn:
            params = {"today": today or today_utc(), "days": days}
            cur = await conn.execute(_Q["report"], params)
            return [SpendRow(*r) for r in await cur.fetchall()]


async def over_quota(pool: Pool) -> bool:
    with translate_errors():
        async with pool.connection() as conn:
            on, _ = await flags.get_flag(conn, flags.OVER_QUOTA)
    return on
