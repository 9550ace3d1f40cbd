"""CLI commands for the guardrails.

omnitutor ops purge                          delete expired idempotency keys and old
                                             rate-limit slices, end idle sessions (run
                                             hourly by a timer)
omnitutor spend flag on|off [--reason TEXT]  the over-quota switch, by hand
omnitutor spend show                         today's spend, the cap and the flag
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from commands import idempotency, ratelimit, sessions, spendcap
from eventstore.database import Pool, database_url, open_pool
from eventstore.settings import Settings
from ops.benchkit import say
from ops.cli_groups import command_group

T = TypeVar("T")


def _with_pool(settings: Settings, work: Callable[[Pool], Awaitable[T]]) -> T:
    async def run(url: str) -> T:
        async with open_pool(url, max_size=1) as pool:
            return await work(pool)

    with database_url(settings.database_url, settings.home) as url:
        return asyncio.run(run(url))


def cmd_ops_purge(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()

    async def purge(pool: Pool) -> tuple[int, int, int]:
        keys = slices = ended = 0
        while n := await idempotency.purge_expired(pool, args.batch):
            keys += n
            say(f"  idempotency keys: {keys} deleted so far")
        while n := await ratelimit.purge_old(pool, batch=args.batch):
            slices += n
            say(f"  rate-limit slices: {slices} deleted so far")
        while n := await sessions.end_idle_sessions(pool, settings.session_idle_min, args.batch):
            ended += n
            say(f"  idle sessions: {ended} ended so far")
        return keys, slices, ended

    keys, slices, ended = _with_pool(settings, purge)
    say(
        f"purge: {keys} expired idempotency keys and {slices} old rate-limit slices deleted, "
        f"{ended} idle sessions ended in {time.perf_counter() - started:.2f}s"
    )
    return 0


def cmd_spend_flag(args: argparse.Namespace, settings: Settings) -> int:
    on = args.state == "on"

    async def flip(pool: Pool) -> spendcap.SpendStatus:
        await spendcap.set_flag(pool, on, args.reason)
        return await spendcap.spend_status(pool, settings.daily_cap_usd)

    status = _with_pool(settings, flip)
    say(
        f"over-quota flag {'ON: new plans and generations are refused' if on else 'off'}"
        f"{f' ({args.reason})' if args.reason else ''}; today's spend ${status.spent_usd:.5f} "
        f"of ${status.cap_usd}"
    )
    return 0


def cmd_spend_show(args: argparse.Namespace, settings: Settings) -> int:
    status = _with_pool(settings, lambda pool: spendcap.spend_status(pool, settings.daily_cap_usd))
    print(
        f"spent_usd={status.spent_usd} cap_usd={status.cap_usd} "
        f"flag={'on' if status.flag_on else 'off'} full={str(status.full).lower()}"
    )
    if status.flag_reason:
        say(f"flag reason: {status.flag_reason}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ops = command_group(sub, "ops", "operational jobs")
    purge = ops.add_parser("purge", help="delete expired idempotency keys and rate slices")
    purge.add_argument("--batch", type=int, default=5000, help="rows per delete (default 5000)")
    purge.set_defaults(handler=cmd_ops_purge)

    spend = command_group(sub, "spend", "the daily spend cap")
    flag = spend.add_parser("flag", help="turn the over-quota flag on or off")
    flag.add_argument("state", choices=["on", "off"])
    flag.add_argument("--reason", help="why (stored with the flag)")
    flag.set_defaults(handler=cmd_spend_flag)
    spend.add_parser("show", help="today's spend, the cap and the flag").set_defaults(
        handler=cmd_spend_show
    )
