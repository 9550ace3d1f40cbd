"""The projections' migrations (versions 20-29)."""

from __future__ import annotations

from pathlib import Path

from eventstore.migrations import Migration

_SQL = Path(__file__).parent / "sql"

MIGRATIONS: tuple[Migration, ...] = (Migration(20, "projections", _SQL / "schema_v20.sql"),)
