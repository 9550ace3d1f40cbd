"""Schema migrations: plain `.sql` files applied in version order, each recorded once.

Each layer owns its migrations (the contract's v0 and v2 files at the top level, the log's
v3 here, others beside the code that reads them); the service composes the full list. A
recorded migration whose file has since changed is an error, never a silent re-apply.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from eventstore.errors import MigrationError, translate_errors
from eventstore.queries import load_queries

ROOT = Path(__file__).resolve().parent.parent
_Q = load_queries(Path(__file__).parent / "sql" / "migrations.sql")
_LOCK_KEY = 0x0717_0000  # advisory lock: one migrator at a time per database

APP_ROLE = "omnitutor_app"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(root: Path = ROOT) -> tuple[Migration, ...]:
    """Every layer's migrations, found by name: `schema_vN.sql` at the top level (the
    contract's) and in each package's `sql/` folder. Found by path rather than imported, so
    this bottom layer composes the full list without importing the layers above it."""
    files = [*root.glob("schema_v*.sql"), *root.glob("*/sql/schema_v*.sql")]
    found = []
    for path in files:
        match = re.fullmatch(r"schema_v(\d+)\.sql", path.name)
        if match is not None:
            found.append(Migration(int(match[1]), str(path.relative_to(root)), path))
    return ordered(found)


def ordered(*groups: Iterable[Migration]) -> tuple[Migration, ...]:
    """Merge the layers' migrations into one list in version order (versions are unique)."""
    merged = sorted((m for group in groups for m in group), key=lambda m: m.version)
    versions = [m.version for m in merged]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return tuple(merged)


def changed(applied: Mapping[int, str], migrations: Sequence[Migration]) -> list[str]:
    """Applied migrations whose file no longer matches what was applied."""
    return [
        f"migration {m.version} ({m.path.name}) changed after it was applied "
        f"(recorded checksum {applied[m.version][:12]}…, file {m.checksum()[:12]}…); "
        "add a new migration instead of editing an applied one"
        for m in migrations
        if m.version in applied and applied[m.version] != m.checksum()
    ]


def problems(applied: Mapping[int, str], migrations: Sequence[Migration]) -> list[str]:
    """Everything that keeps a database from matching the code's schema."""
    missing = [
        f"migration {m.version} ({m.name}) not applied"
        for m in migrations
        if m.version not in applied
    ]
    return changed(applied, migrations) + missing


async def applied_checksums(conn: AsyncConnection[Any]) -> dict[int, str]:
    with translate_errors():
        if (await (await conn.execute(_Q["migrations_table_exists"])).fetchone()) is None:
            return {}
        rows = await (await conn.execute(_Q["applied_migrations"])).fetchall()
    return {int(v): str(c) for v, c in rows}


def pending(conn: psycopg.Connection, migrations: Sequence[Migration]) -> list[Migration]:
    """The migrations not yet applied; raises MigrationError if an applied file changed."""
    with translate_errors():
        conn.execute(_Q["create_migrations_table"])
        applied = {v: c for v, c in conn.execute(_Q["applied_migrations"]).fetchall()}
        conn.commit()
    if errors := changed(applied, migrations):
        raise MigrationError("; ".join(errors))
    return [m for m in migrations if m.version not in applied]


def migrate(
    conn: psycopg.Connection, migrations: Sequence[Migration], app_role: str = APP_ROLE
) -> list[Migration]:
    """Apply every missing migration, each in its own transaction, under an advisory lock."""
    with translate_errors():
        conn.execute(_Q["lock"], {"key": _LOCK_KEY})
        try:
            todo = pending(conn, migrations)
            for m in todo:
                with conn.transaction():
                    conn.execute(sql.SQL(m.text()))  # a trusted file shipped with the code
                    conn.execute(
                        _Q["record_migration"],
                        {"version": m.version, "name": m.name, "checksum": m.checksum()},
                    )
            if todo:
                grant_app_role(conn, app_role)
            conn.commit()
        finally:
            conn.execute(_Q["unlock"], {"key": _LOCK_KEY})
            conn.commit()
    return todo


def grant_app_role(conn: psycopg.Connection, app_role: str = APP_ROLE) -> None:
    """Give the app role data access, never schema changes, and no way to rewrite the log."""
    if conn.execute(_Q["role_exists"], {"role": app_role}).fetchone() is None:
        return
    role = sql.Identifier(app_role)
    for statement in (
        "GRANT USAGE ON SCHEMA public TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        "REVOKE UPDATE, DELETE, TRUNCATE ON events FROM {role}",
        "GRANT UPDATE (position) ON events TO {role}",
    ):
        conn.execute(sql.SQL(statement).format(role=role))


def reset(conn: psycopg.Connection, migrations: Sequence[Migration]) -> float:
    """Drop everything in the public schema and rebuild it; returns the seconds it took."""
    started = time.perf_counter()
    with translate_errors():
        conn.execute(_Q["drop_schema"])
        conn.execute(_Q["create_schema"])
        conn.commit()
    migrate(conn, migrations)
    return time.perf_counter() - started


# The service's full migration list (contracts v0/v2, the log's v3-4, commands' v10-19,
# projections' v20-29), in version order.
MIGRATIONS: tuple[Migration, ...] = discover()
