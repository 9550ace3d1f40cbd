"""`omnitutor cache prewarm|purge|flush`: the cache table's upkeep (commands/prewarm.py).

omnitutor cache prewarm [--top 100]   regenerate the most-asked plans that are missing or
                                      expire within a day (nightly timer)
omnitutor cache purge                 delete expired cache rows
omnitutor cache flush --yes           delete every cache row (never assets)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from commands import prewarm
from commands.bootstrap import open_provider
from commands.generation import tier_models
from commands.providers import Tier
from eventstore.database import database_url, open_pool
from eventstore.settings import Settings
from eventstore.store import EventStore


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(settings: Settings, work: Any) -> Any:
    async def main(url: str) -> Any:
        async with open_pool(url, max_size=2) as pool:
            return await work(pool)

    with database_url(settings.database_url, settings.home) as url:
        return asyncio.run(main(url))


def cmd_prewarm(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    fast_model = tier_models(settings.provider, {Tier.FAST: settings.model_fast})[Tier.FAST]

    async def work(pool: Any) -> prewarm.PrewarmReport:
        provider = open_provider(settings)
        try:
            return await prewarm.prewarm(
                pool,
                EventStore(pool),
                provider,
                fast_model=fast_model,
                cap_usd=settings.daily_cap_usd,
                forced=settings.over_quota_forced,
                top=args.top,
                on_progress=say,
            )
        finally:
            await provider.aclose()

    report: prewarm.PrewarmReport = _run(settings, work)
    say(
        f"prewarm: {report.considered} most-asked plan keys, {report.fresh} fresh, "
        f"{report.generated} generated, {report.failed} failed"
        f"{', stopped at the spend cap' if report.stopped_at_cap else ''} "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return 1 if report.stopped_at_cap else 0


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    deleted = _run(settings, prewarm.purge_expired)
    say(f"cache purge: {deleted} expired rows deleted in {time.perf_counter() - started:.2f}s")
    return 0


def cmd_flush(args: argparse.Namespace, settings: Settings) -> int:
    if not args.yes:
        say("cache flush deletes every cached plan and beat; run again with --yes to confirm")
        return 2
    started = time.perf_counter()
    deleted = _run(settings, prewarm.flush)
    say(
        f"cache flush: {deleted} rows deleted in {time.perf_counter() - started:.2f}s "
        "(assets are untouched)"
    )
    return 0


def register(sub: Any) -> None:
    cache = sub.add_parser("cache", help="the model cache's upkeep").add_subparsers(
        dest="cache", required=True
    )
    p = cache.add_parser("prewarm", help="regenerate the most-asked plans before they expire")
    p.add_argument("--top", type=int, default=100, help="how many plan keys (default 100)")
    p.set_defaults(handler=cmd_prewarm)
    cache.add_parser("purge", help="delete expired cache rows").set_defaults(handler=cmd_purge)
    f = cache.add_parser("flush", help="delete every cache row (never assets)")
    f.add_argument("--yes", action="store_true", help="confirm")
    f.set_defaults(handler=cmd_flush)
