"""`omnitutor ops secrets-env`: write the environment file from SSM Parameter Store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eventstore.settings import Settings
from ops.benchkit import say
from ops.cli_groups import command_group
from ops.secrets import SecretsError, fetch, normalise_path, render, to_environment, write_private

DEFAULT_REGION = "us-east-1"
# Never stdout: the values are secrets, and a terminal or a CI log must not see them.
DEFAULT_OUTPUT = "/etc/omnitutor/env"


def cmd_secrets_env(args: argparse.Namespace, settings: Settings) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        path = normalise_path(args.path)
    except SecretsError as e:
        say(f"error: {e}")
        return 2
    try:
        client = boto3.client("ssm", region_name=args.region)
        parameters = fetch(client, path)
    except (BotoCoreError, ClientError) as e:
        say(f"error: reading SSM parameters under {path}: {e}")
        return 1
    if not parameters:
        # An empty file would start the service with no keys at all; better to stop here.
        say(f"error: no parameters under {path} in {args.region}; nothing written")
        return 1
    try:
        env = to_environment(parameters)
    except SecretsError as e:
        say(f"error: {e}; nothing written")
        return 1
    content = render(env, f"from SSM {path} ({args.region})")
    write_private(Path(args.output), content)
    for name in sorted(env):
        say(f"  {name}")
    say(f"secrets-env: {len(env)} variables from {path} written to {args.output} (mode 0600)")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    sub = command_group(subparsers, "ops", "production operations")
    s = sub.add_parser(
        "secrets-env",
        help="write an environment file from SSM Parameter Store (names printed, never values)",
    )
    s.add_argument("--path", required=True, help="SSM path, e.g. /omnitutor/prod/")
    s.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help=f"file to replace atomically, mode 0600 (default {DEFAULT_OUTPUT})",
    )
    s.add_argument(
        "--region", default=DEFAULT_REGION, help=f"AWS region (default {DEFAULT_REGION})"
    )
    s.set_defaults(handler=cmd_secrets_env)
