"""`omnitutor projections …` and `omnitutor spend …`: run, watch, repair and rebuild the read
side, and the daily spend job.

    omnitutor projections run [NAME...]          run the projections (as `serve` does)
    omnitutor projections status [--json]        checkpoint, lag (events, seconds), state
    omnitutor projections rebuild [NAME...]      rebuild from position 0 into shadows, swap
    omnitutor projections skip NAME --position P skip the event a projection failed at
    omnitutor projections stop|start NAME        pause a projection, or start it again
    omnitutor spend aggregate [--day YYYY-MM-DD] fill spend_daily, set the over-quota flag
    omnitutor spend report [--days N]            spend per day and model
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from eventstore import database
from eventstore.database import Pool, database_url
from eventstore.settings import Settings
from eventstore.store import EventStore, Sequencer
from ops.benchkit import ProgressBar, say
from ops.cli_groups import command_group
from projections import checkpoints, spend
from projections.catalog import BY_NAME
from projections.errors import ProjectionError
from projections.rebuild import Rebuild
from projections.runner import ProjectionRunner

T = TypeVar("T")


@contextlib.asynccontextmanager
async def open_pool(url: str, max_size: int = 4) -> AsyncIterator[Pool]:
    async with database.open_pool(url, max_size=max_size) as pool:
        yield pool


def with_pool(settings: Settings, work: Callable[[Pool], Awaitable[T]], max_size: int = 4) -> T:
    async def main() -> T:
        with database_url(settings.database_url, settings.home) as url:
            async with open_pool(url, max_size) as pool:
                return await work(pool)

    return asyncio.run(main())


async def _until_signalled(work: Awaitable[Any]) -> None:
    """Run `work` until SIGTERM or SIGINT, then cancel it cleanly (locks are released)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


# -- projections ------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool: Pool) -> None:
        runner = ProjectionRunner(pool, args.names or None, poll_s=settings.projections_poll_s)
        # Every process numbers committed events (eventstore/store.py); its passes wake us.
        sequencer = Sequencer(EventStore(pool), on_sequenced=runner.wake)
        say(f"running projections: {', '.join(p.name for p in runner.projections)}")

        async def both() -> None:
            await asyncio.gather(runner.run(), sequencer.run())

        await _until_signalled(both())
        say("projections runner stopped")

    try:
        with_pool(settings, work, max_size=4)
    except ProjectionError as e:
        say(f"error: {e}")
        return 1
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    rows = with_pool(settings, checkpoints.status, max_size=1)
    if args.json:
        print(orjson.dumps([r.__dict__ for r in rows], default=str).decode())
        return 0
    print(f"{'projection':<12} {'position':>10} {'head':>10} {'lag':>8} {'lag s':>8}  state")
    for r in rows:
        owner = f" (runner pid {r.owner_pid})" if r.owner_pid else " (no runner)"
        line = (
            f"{r.name:<12} {r.position:>10,} {r.head:>10,} {r.lag_events:>8,} "
            f"{r.lag_s:>8.2f}  {r.state}{owner if r.state == 'running' else ''}"
        )
        if r.state == "failed":
            line += f" at position {r.failed_position}: {r.error}"
        if r.rebuild_position is not None:
            line += f" [rebuild at {r.rebuild_position:,}]"
        print(line)
    return 1 if any(r.state == "failed" for r in rows) else 0


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    bar = ProgressBar("rebuild")

    async def work(pool: Pool) -> int:
        rebuild = Rebuild(
            pool,
            args.names or None,
            page_size=args.page_size,
            restart=args.restart,
            on_progress=bar.update,
        )
        try:
            result = await rebuild.run()
        except asyncio.CancelledError:
            bar.close()
            say(f"rebuild of {', '.join(rebuild.names)} interrupted; run it again to resume")
            return 130
        bar.update(result.positions, result.positions, force=True)
        bar.close()
        rate = result.positions / result.seconds if result.seconds else 0.0
        rows = ", ".join(f"{t}={n:,}" for t, n in result.rows.items())
        resumed = f", resumed from {result.resumed_from:,}" if result.resumed_from else ""
        say(
            f"rebuilt {', '.join(result.projections)}: {result.positions:,} log positions "
            f"({result.events:,} events read) in {result.seconds:.1f}s ({rate:,.0f} events/s)"
            f"{resumed}; swapped in at position {result.position:,}; rows: {rows}"
        )
        return 0

    async def interruptible(pool: Pool) -> int:
        task = asyncio.ensure_future(work(pool))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await task

    try:
        return with_pool(settings, interruptible, max_size=2)
    except ProjectionError as e:
        bar.close()
        say(f"error: {e}")
        return 1


def cmd_skip(args: argparse.Namespace, settings: Settings) -> int:
    try:
        position = with_pool(
            settings, lambda pool: checkpoints.skip(pool, args.name, args.position), max_size=1
        )
    except ProjectionError as e:
        say(f"error: {e}")
        return 1
    say(f"skipped position {position} of {args.name}; it resumes from there")
    return 0


def cmd_set_state(state: str) -> Callable[[argparse.Namespace, Settings], int]:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        try:
            position = with_pool(
                settings, lambda pool: checkpoints.set_state(pool, args.name, state), max_size=1
            )
        except ProjectionError as e:
            say(f"error: {e}")
            return 1
        say(f"{args.name} is {state} at position {position}")
        return 0

    return handler


# -- spend ------------------------------------------------------------------------------


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-05-10") from None


def cmd_spend_aggregate(args: argparse.Namespace, settings: Settings) -> int:
    days = [args.day] if args.day else list(spend.default_days())
    cap = Decimal(str(settings.daily_cap_usd))
    result = with_pool(settings, lambda pool: spend.aggregate(pool, days, cap), max_size=1)
    for d in result.days:
        say(f"{d.day.isoformat()}: {d.groups} model × purpose rows, ${d.cost_usd:.5f}")
    flag = "SET" if result.over_quota else "clear"
    say(
        f"spend aggregate: {len(result.days)} day(s); today ${result.today_usd:.2f} of "
        f"${result.cap_usd:.2f} cap; over_quota flag {flag}"
    )
    return 0


def cmd_spend_report(args: argparse.Namespace, settings: Settings) -> int:
    rows = with_pool(settings, lambda pool: spend.report(pool, args.days), max_size=1)
    print(f"{'day':<10}  {'model':<14} {'purpose':<12} {'runs':>7} {'tokens':>12} {'cost_usd':>12}")
    totals: dict[date, Decimal] = {}
    for r in rows:
        tokens = r.prompt_tokens + r.completion_tokens
        print(
            f"{r.day.isoformat():<10}  {r.model:<14} {r.purpose:<12} {r.runs:>7,} "
            f"{tokens:>12,} {r.cost_usd:>12.5f}"
        )
        totals[r.day] = totals.get(r.day, Decimal(0)) + r.cost_usd
    for day, total in sorted(totals.items(), reverse=True):
        print(f"{day.isoformat():<10}  {'total':<14} {'':<12} {'':>7} {'':>12} {total:>12.5f}")
    say(f"spend report: {len(totals)} day(s) with spend in the last {args.days}")
    return 0


def register(sub: Any) -> None:
    """Add `projections` and `spend` to the `omnitutor` command's sub-commands."""
    names = sorted(BY_NAME)
    p = sub.add_parser("projections", help="the read side: run, status, rebuild, skip")
    ps = p.add_subparsers(dest="projections", required=True)
    r = ps.add_parser("run", help="run the projections until stopped")
    r.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({', '.join(names)})")
    r.set_defaults(handler=cmd_run)
    s = ps.add_parser("status", help="checkpoint, lag and state of each projection")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_status)
    b = ps.add_parser("rebuild", help="rebuild from position 0 into shadow tables and swap")
    b.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({', '.join(names)})")
    b.add_argument("--restart", action="store_true", help="discard a rebuild in progress")
    b.add_argument("--page-size", type=int, default=5000)
    b.set_defaults(handler=cmd_rebuild)
    k = ps.add_parser("skip", help="skip the event a failed projection stopped at")
    k.add_argument("name", choices=names)
    k.add_argument("--position", type=int, required=True)
    k.set_defaults(handler=cmd_skip)
    for state, verb in (("stopped", "stop"), ("running", "start")):
        c = ps.add_parser(verb, help=f"{verb} a projection")
        c.add_argument("name", choices=names)
        c.set_defaults(handler=cmd_set_state(state))

    sps = command_group(sub, "spend", "the daily spend: aggregate, report, cap flag")
    a = sps.add_parser("aggregate", help="fill spend_daily and set the over-quota flag")
    a.add_argument("--day", type=_day, help="one UTC day (default: yesterday and today)")
    a.set_defaults(handler=cmd_spend_aggregate)
    rp = sps.add_parser("report", help="spend per day and model")
    rp.add_argument("--days", type=int, default=7)
    rp.set_defaults(handler=cmd_spend_report)
