"""`omnitutor ops assets-bucket`: the omnitutor-assets bucket as P0 §3.3 wants it.

Creates the bucket when it is missing, sets its CORS rule (GET and HEAD from the site's
origins, with the headers an audio player needs to seek: Range in, Content-Range and
Accept-Ranges out) and makes sure the lifecycle rule is in force (backups expire after 30
days; assets never do: they are content-addressed and cached forever). `--check` changes
nothing and reports what differs. boto3 reads region, endpoint and credentials from its
usual sources (AWS_REGION, AWS_ENDPOINT_URL, the instance role).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from eventstore.settings import Settings
from ops.backup import DEFAULT_BUCKET, LIFECYCLE_RULE_ID, RETENTION_DAYS, apply_retention
from ops.cli_groups import command_group

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

DEFAULT_ORIGINS = ("https://omnitutor.ai", "https://www.omnitutor.ai")
CORS_RULE_ID = "omnitutor-site"
CORS_MAX_AGE_S = 86_400


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cors_rule(origins: tuple[str, ...]) -> dict[str, Any]:
    return {
        "ID": CORS_RULE_ID,
        "AllowedOrigins": list(origins),
        "AllowedMethods": ["GET", "HEAD"],
        "AllowedHeaders": ["Range", "If-None-Match", "If-Modified-Since"],
        "ExposeHeaders": ["Content-Length", "Content-Range", "Accept-Ranges", "ETag"],
        "MaxAgeSeconds": CORS_MAX_AGE_S,
    }


@dataclass(frozen=True)
class BucketReport:
    created: bool
    cors_changed: bool
    lifecycle_changed: bool
    problems: tuple[str, ...]  # with --check: what is not as it should be


def _current_cors(s3: S3Client, bucket: str) -> list[dict[str, Any]]:
    try:
        return [dict(r) for r in s3.get_bucket_cors(Bucket=bucket)["CORSRules"]]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "NoSuchCORSConfiguration":
            return []
        raise


def _has_retention(s3: S3Client, bucket: str) -> bool:
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
            return False
        raise
    return any(
        r.get("ID") == LIFECYCLE_RULE_ID
        and r.get("Status") == "Enabled"
        and r.get("Expiration", {}).get("Days") == RETENTION_DAYS
        for r in rules
    )


def _same_cors(current: list[dict[str, Any]], wanted: dict[str, Any]) -> bool:
    def norm(rule: dict[str, Any]) -> dict[str, Any]:
        return {k: sorted(v) if isinstance(v, list) else v for k, v in rule.items() if k != "ID"}

    return any(norm(r) == norm(wanted) for r in current)


def ensure_bucket(
    s3: S3Client, bucket: str, origins: tuple[str, ...], region: str, check: bool = False
) -> BucketReport:
    """Make the bucket match (or, with `check`, only report how it differs)."""
    problems: list[str] = []
    created = cors_changed = lifecycle_changed = False
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise
        if check:
            return BucketReport(False, False, False, (f"bucket {bucket} does not exist",))
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(
                Bucket=bucket,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )
        created = True
    wanted = cors_rule(origins)
    current = _current_cors(s3, bucket)
    if not _same_cors(current, wanted):
        if check:
            problems.append(f"CORS does not allow GET/HEAD with Range from {', '.join(origins)}")
        else:
            rules: list[Any] = [r for r in current if r.get("ID") != CORS_RULE_ID] + [wanted]
            s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": rules})
            cors_changed = True
    if not _has_retention(s3, bucket):
        if check:
            problems.append(f"no {RETENTION_DAYS}-day lifecycle rule for backups/")
        else:
            apply_retention(s3, bucket)
            lifecycle_changed = True
    return BucketReport(created, cors_changed, lifecycle_changed, tuple(problems))


def cmd_assets_bucket(args: argparse.Namespace, settings: Settings) -> int:
    import boto3

    s3: S3Client = boto3.client("s3")
    region = s3.meta.region_name or "us-east-1"
    origins = tuple(args.origin or DEFAULT_ORIGINS)
    bucket = args.bucket or settings.assets_bucket or DEFAULT_BUCKET
    try:
        report = ensure_bucket(s3, bucket, origins, region, check=args.check)
    except (BotoCoreError, ClientError) as e:
        say(f"error: {e}")
        return 1
    if args.check:
        for problem in report.problems:
            say(f"  {problem}")
        say(
            f"assets bucket {bucket}: "
            + ("as it should be" if not report.problems else f"{len(report.problems)} problem(s)")
        )
        return 1 if report.problems else 0
    changes = [
        name
        for name, changed in (
            ("created", report.created),
            ("CORS set", report.cors_changed),
            ("lifecycle rule set", report.lifecycle_changed),
        )
        if changed
    ]
    say(f"assets bucket {bucket} in {region}: {', '.join(changes) or 'already as it should be'}")
    return 0


def register(sub: Any) -> None:
    ops = command_group(sub, "ops", "operations")
    p = ops.add_parser(
        "assets-bucket", help="create or check the assets bucket (CORS, lifecycle rule)"
    )
    p.add_argument("--bucket", help=f"default: OMNITUTOR_ASSETS_BUCKET or {DEFAULT_BUCKET}")
    p.add_argument(
        "--origin",
        action="append",
        help=f"a site origin allowed by CORS (repeatable; default {', '.join(DEFAULT_ORIGINS)})",
    )
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 on a difference")
    p.set_defaults(handler=cmd_assets_bucket)
