"""The command side's migrations (versions 10-19)."""

from __future__ import annotations

from pathlib import Path

from eventstore.migrations import Migration

_SQL = Path(__file__).parent / "sql"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(10, "commands", _SQL / "schema_v10.sql"),
    Migration(11, "guardrails", _SQL / "schema_v11.sql"),
    # 11 is the guardrails' (idempotency keys, rate limits, spend).
    Migration(12, "lesson_generation", _SQL / "schema_v12.sql"),
)
