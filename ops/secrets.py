"""Secrets from AWS SSM Parameter Store, written as the service's environment file.

Production keeps its API keys and database URL under one SSM path (`/omnitutor/prod/`).
The deploy reads every parameter below it and writes `/etc/omnitutor/env`, the
`EnvironmentFile=` of the systemd units: `/omnitutor/prod/anthropic_api_key` becomes
`ANTHROPIC_API_KEY='…'`.

Values are written single-quoted, a form systemd's EnvironmentFile and POSIX `sh` read the
same way (nothing inside single quotes is special to either), so the deploy script can also
`.` the file. A value that cannot be written that way (a single quote, a newline, a control
character) is refused by name, never written half-right. Secret values are never printed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_ssm.client import SSMClient

_NAME = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
_UNSAFE_VALUE = re.compile(r"['\x00-\x1f\x7f]")


class SecretsError(Exception):
    """Parameters that cannot become an environment file; the message names them."""


@dataclass(frozen=True)
class Parameter:
    name: str  # full SSM name, e.g. /omnitutor/prod/anthropic_api_key
    value: str


def normalise_path(path: str) -> str:
    """`/omnitutor/prod` and `/omnitutor/prod/` name the same tree."""
    if not path.startswith("/"):
        raise SecretsError(f"SSM path must start with '/', got {path!r}")
    return path.rstrip("/") + "/"


def env_name(parameter_name: str) -> str:
    """Upper snake case of the last path segment: …/anthropic_api_key → ANTHROPIC_API_KEY."""
    last = parameter_name.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[-.]", "_", last).upper()
    if not _NAME.match(name):
        raise SecretsError(
            f"parameter {parameter_name!r} does not make an environment variable name "
            f"(got {name!r}; use letters, digits, '_', '-' or '.', not starting with a digit)"
        )
    return name


def to_environment(parameters: Iterable[Parameter]) -> dict[str, str]:
    """Map parameters to variables; two parameters that make the same name are an error."""
    env: dict[str, str] = {}
    source: dict[str, str] = {}
    for p in parameters:
        name = env_name(p.name)
        if name in source:
            raise SecretsError(f"{source[name]} and {p.name} both make {name}")
        if _UNSAFE_VALUE.search(p.value):
            raise SecretsError(
                f"{p.name} has a single quote, newline or control character, which an "
                "environment file cannot carry safely; store it without them"
            )
        env[name], source[name] = p.value, p.name
    return env


def render(env: Mapping[str, str], header: str) -> str:
    lines = [f"# {header}", "# Written by `omnitutor ops secrets-env`; edits are overwritten."]
    lines += [f"{name}='{env[name]}'" for name in sorted(env)]
    return "\n".join(lines) + "\n"


def fetch(client: SSMClient, path: str) -> list[Parameter]:
    """Every parameter under `path`, recursively, SecureStrings decrypted, all pages."""
    paginator = client.get_paginator("get_parameters_by_path")
    found: list[Parameter] = []
    for page in paginator.paginate(Path=path, Recursive=True, WithDecryption=True):
        for p in page.get("Parameters", []):
            found.append(Parameter(p["Name"], p.get("Value", "")))
    return sorted(found, key=lambda p: p.name)


def write_private(path: Path, content: str) -> None:
    """Replace `path` atomically with a file only its owner can read (mode 0600).

    The temporary file is created 0600 in the same directory, so the secret is never
    readable by anyone else, not even for a moment, and readers see the old file or the
    new one, never a partial one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
