"""CLI commands for accounts and personal data.

omnitutor auth outbox [--limit N]            the latest sign-in mails of the local outbox
omnitutor privacy purge [--older-than DAYS]  erase users deleted at least DAYS ago (daily
                                             timer; docs/privacy.md)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from commands.mailer import outbox_dir, read_outbox
from commands.privacy import PurgeReport, purge
from eventstore.database import database_url, open_pool
from eventstore.settings import Settings
from eventstore.store import EventStore
from ops.cli_groups import command_group
from projections.checkpoints import wait_for


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_auth_outbox(args: argparse.Namespace, settings: Settings) -> int:
    if settings.mail_via_ses:
        say("mail goes through Amazon SES here (OMNITUTOR_MAIL_FROM is set): no local outbox")
        return 1
    directory = outbox_dir(settings)
    messages = read_outbox(directory, args.limit)
    if not messages:
        say(f"the outbox ({directory}) is empty")
        return 0
    for m in messages:
        print(f"{m['sent_at']}  to {m['to']}  «{m['subject']}»")
        print(f"    {m['link']}")
    say(f"{len(messages)} latest of {directory}")
    return 0


def cmd_privacy_purge(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    days = settings.purge_after_days if args.older_than is None else args.older_than

    def progress(done: int, total: int) -> None:
        say(f"  {done}/{total} users erased")

    async def run(url: str) -> tuple[PurgeReport, bool]:
        async with open_pool(url, max_size=2) as pool:
            store = EventStore(pool)
            report = await purge(pool, store, settings, days, progress)
            await store.sequence()  # number the lesson.erased events now, not at next start
            applied = await wait_for(
                pool, await store.head_position(), ["lessons"], timeout=args.wait
            )
            return report, applied

    with database_url(settings.database_url, settings.home) as url:
        report, applied = asyncio.run(run(url))
    if report.lessons and not applied:
        say(
            "warning: the lessons projection has not applied the erasure yet; the service "
            "(or `omnitutor projections run`) removes those rows when it runs"
        )
    say(f"privacy purge: {report.summary()} in {time.perf_counter() - started:.2f}s")
    return 0


def _days(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of days >= 0, got {raw!r}")
    return int(raw)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    auth = command_group(sub, "auth", "sign-in by mail")
    outbox = auth.add_parser("outbox", help="print the latest mails of the local outbox")
    outbox.add_argument("--limit", type=int, default=10, help="how many (default 10)")
    outbox.set_defaults(handler=cmd_auth_outbox)

    privacy = command_group(sub, "privacy", "personal data")
    p = privacy.add_parser("purge", help="erase users deleted at least --older-than days ago")
    p.add_argument(
        "--older-than",
        type=_days,
        default=None,
        metavar="DAYS",
        help="days since deletion (default 30, OMNITUTOR_PURGE_AFTER_DAYS)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for the service's projections to apply the erasure (default 30)",
    )
    p.set_defaults(handler=cmd_privacy_purge)
