"""Scratch databases for the benchmarks: created, migrated, and always dropped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from eventstore.database import create_database, drop_database
from eventstore.migrations import MIGRATIONS, migrate


@contextmanager
def scratch_database(admin_url: str, label: str) -> Iterator[str]:
    """A migrated database `omnitutor_bench_<label>_<pid>` for the block; yields its URL."""
    name = f"omnitutor_bench_{label}_{os.getpid()}"
    url = create_database(admin_url, name)
    try:
        with psycopg.connect(url) as conn:
            migrate(conn, MIGRATIONS)
        yield url
    finally:
        drop_database(admin_url, name)
