"""`omnitutor backup run|restore|lifecycle`: nightly dumps to S3, restores, retention.

    omnitutor backup run [--bucket omnitutor-assets] [--prefix backups/] [--key KEY]
    omnitutor backup restore --from s3://bucket/key|FILE --into DATABASE_URL [--force]
    omnitutor backup lifecycle [--bucket omnitutor-assets] [--prefix backups/] [--days 30]

AWS credentials, region and endpoint come from the usual boto3 sources (instance role,
AWS_* environment variables, AWS_ENDPOINT_URL for a local S3).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from eventstore.database import database_url
from eventstore.errors import StoreError
from eventstore.settings import Settings
from ops.backup import (
    DEFAULT_BUCKET,
    DEFAULT_PREFIX,
    RETENTION_DAYS,
    BackupError,
    apply_retention,
    backup_key,
    normalise_prefix,
    open_dump,
    restore,
    run_backup,
    today_utc,
)
from ops.benchkit import say

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

DEFAULT_REGION = "us-east-1"


def _s3(region: str) -> S3Client:
    import boto3

    return boto3.client("s3", region_name=region)


def cmd_backup_run(args: argparse.Namespace, settings: Settings) -> int:
    key = args.key or backup_key(args.prefix, today_utc())
    source = args.database_url or settings.database_url
    try:
        with database_url(source, settings.home) as url:
            say(f"backup: dumping to s3://{args.bucket}/{key}")
            result = run_backup(url, _s3(args.region), args.bucket, key)
    except (BackupError, StoreError, BotoCoreError, ClientError) as e:
        say(f"error: backup failed, nothing was stored at s3://{args.bucket}/{key}: {e}")
        return 1
    print(result.uri)
    say(
        f"backup: {result.uri} · {result.gzip_bytes} bytes gzipped "
        f"({result.sql_bytes} bytes of SQL) in {result.seconds:.2f}s"
    )
    return 0


def cmd_backup_restore(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with open_dump(args.source, lambda: _s3(args.region)) as dump:
            result = restore(dump, args.into, force=args.force)
    except BackupError as e:
        say(f"error: {e}")
        return 1
    except (StoreError, BotoCoreError, ClientError) as e:
        say(f"error: restore from {args.source} failed: {e}")
        return 1
    width = max((len(t) for t in result.tables), default=0)
    for table, rows in result.tables.items():
        print(f"{table:<{width}}  {rows}")
    say(
        f"restore: {len(result.tables)} tables, {sum(result.tables.values())} rows "
        f"({result.sql_bytes} bytes of SQL) in {result.seconds:.2f}s. Projections are derived "
        "from the event log and can be rebuilt with `omnitutor projections rebuild`."
    )
    return 0


def cmd_backup_lifecycle(args: argparse.Namespace, settings: Settings) -> int:
    if args.days < 1:
        say(f"error: --days must be at least 1, got {args.days}")
        return 2
    try:
        rules = apply_retention(_s3(args.region), args.bucket, args.prefix, args.days)
    except (BotoCoreError, ClientError) as e:
        say(f"error: setting the lifecycle of {args.bucket} failed: {e}")
        return 1
    for rule in rules:
        say(f"  rule {rule.get('ID')}: {rule.get('Filter')} expire after {rule.get('Expiration')}")
    say(
        f"lifecycle: s3://{args.bucket}/{normalise_prefix(args.prefix)} objects expire after "
        f"{args.days} days ({len(rules)} rules on the bucket)"
    )
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    backup = subparsers.add_parser("backup", help="database backups to S3")
    sub = backup.add_subparsers(dest="backup", required=True)

    run = sub.add_parser("run", help="pg_dump the database, gzipped, to S3")
    run.add_argument("--bucket", default=DEFAULT_BUCKET)
    run.add_argument("--prefix", default=DEFAULT_PREFIX)
    run.add_argument("--key", help="object key (default: PREFIX + YYYY-MM-DD.sql.gz, UTC)")
    run.add_argument("--database-url", help="database to dump (default: DATABASE_URL)")
    run.add_argument("--region", default=DEFAULT_REGION)
    run.set_defaults(handler=cmd_backup_run)

    rs = sub.add_parser("restore", help="restore a backup into a new (scratch) database")
    rs.add_argument("--from", dest="source", required=True, help="s3://bucket/key or a file")
    rs.add_argument("--into", required=True, help="URL of the database to restore into")
    rs.add_argument(
        "--force", action="store_true", help="replace everything in a non-empty database"
    )
    rs.add_argument("--region", default=DEFAULT_REGION)
    rs.set_defaults(handler=cmd_backup_restore)

    lc = sub.add_parser("lifecycle", help=f"expire backups after {RETENTION_DAYS} days")
    lc.add_argument("--bucket", default=DEFAULT_BUCKET)
    lc.add_argument("--prefix", default=DEFAULT_PREFIX)
    lc.add_argument("--days", type=int, default=RETENTION_DAYS)
    lc.add_argument("--region", default=DEFAULT_REGION)
    lc.set_defaults(handler=cmd_backup_lifecycle)
