"""The contract's schema, built from an empty database by the migration runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from eventstore.errors import MigrationError
from eventstore.migrations import MIGRATIONS, Migration, migrate, pending, reset

# Contracts §2: every table and column of schema_v0 + schema_v2.
CONTRACT_COLUMNS: dict[str, set[str]] = {
    "users": {
        "id",
        "anon_id",
        "email",
        "settings_json",
        "created_at",
        "updated_at",
        "org_id",
        "deleted_at",
    },
    "sessions": {"id", "user_id", "started_at", "ended_at", "client_meta_json", "deleted_at"},
    "lessons": {
        "id",
        "session_id",
        "user_id",
        "subject",
        "topic",
        "status",
        "level_at_start",
        "intent_json",
        "plan_json",
        "created_at",
        "completed_at",
        "deleted_at",
        "subject_id",
        "topic_id",
    },
    "beats": {
        "id",
        "lesson_id",
        "ord",
        "kind",
        "content_json",
        "narration_text",
        "audio_url",
        "viz_url",
        "status",
        "created_at",
        "deleted_at",
    },
    "interactions": {
        "id",
        "lesson_id",
        "beat_id",
        "type",
        "payload_json",
        "response_json",
        "ts",
        "deleted_at",
    },
    "cache": {"key", "model", "payload_json", "hits", "last_hit_at", "ttl_at", "created_at"},
    "assets": {
        "id",
        "lesson_id",
        "beat_id",
        "type",
        "url",
        "mime",
        "size_bytes",
        "created_at",
        "content_hash",
        "deleted_at",
    },
    "events": {"id", "session_id", "lesson_id", "type", "payload_json", "ts"},
    "model_runs": {
        "id",
        "trace_id",
        "lesson_id",
        "beat_id",
        "model",
        "purpose",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "status",
        "error_code",
        "ts",
    },
    "magic_links": {"token", "user_id", "email", "consumed_at", "expires_at", "created_at"},
    "rate_buckets": {"scope", "key", "bucket", "count", "window_start"},
    "subjects": {"id", "code", "name", "archetype", "created_at"},
    "topics": {"id", "subject_id", "name", "canonical", "created_at"},
    "plan_revisions": {
        "id",
        "lesson_id",
        "revision_num",
        "plan_json",
        "triggered_by",
        "feedback_text",
        "created_at",
    },
    "idempotency_keys": {
        "key",
        "request_hash",
        "user_id",
        "status_code",
        "response_json",
        "created_at",
        "expires_at",
    },
    "subscriptions": {
        "id",
        "user_id",
        "plan_code",
        "status",
        "stripe_customer_id",
        "stripe_subscription_id",
        "current_period_start",
        "current_period_end",
        "created_at",
        "updated_at",
    },
    "mastery_records": {
        "user_id",
        "topic_id",
        "last_seen_at",
        "score",
        "attempts",
        "correct",
        "next_review_at",
        "updated_at",
    },
}

CONTRACT_INDEXES = {
    "idx_lessons_session",
    "idx_cache_model_ttl",
    "idx_events_session_ts",
    "idx_model_runs_ts",
    "idx_model_runs_trace",
    "idx_assets_content_hash",
    "idx_topics_subject",
    "idx_idempotency_expires",
    "idx_subscriptions_user",
    "idx_mastery_next_review",
}

# (table, referenced table) for every foreign key of the contract, less the ones dropped on
# purpose: the two from `events` (v3: the log references nothing derived from it) and the two
# from `model_runs` (v20: model_runs and lessons/beats are separate projections, and a key
# between them would make one table's rows depend on how far the other had got, so a rebuild
# could differ from the live table).
DROPPED_FOREIGN_KEYS = {
    ("events", "sessions"),
    ("events", "lessons"),
    ("model_runs", "lessons"),
    ("model_runs", "beats"),
}
CONTRACT_FOREIGN_KEYS = {
    ("sessions", "users"),
    ("lessons", "sessions"),
    ("lessons", "users"),
    ("beats", "lessons"),
    ("interactions", "lessons"),
    ("interactions", "beats"),
    ("assets", "lessons"),
    ("assets", "beats"),
    ("magic_links", "users"),
    ("topics", "subjects"),
    ("lessons", "subjects"),
    ("lessons", "topics"),
    ("plan_revisions", "lessons"),
    ("idempotency_keys", "users"),
    ("subscriptions", "users"),
    ("mastery_records", "users"),
    ("mastery_records", "topics"),
}

CONTRACT_UNIQUES = {
    ("users", "anon_id"),
    ("users", "email"),
    ("beats", "lesson_id,ord"),
    ("subjects", "code"),
    ("plan_revisions", "lesson_id,revision_num"),
}


def columns(conn: psycopg.Connection) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for table, column in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public'"
    ):
        found.setdefault(table, set()).add(column)
    return found


def test_schema_from_empty_has_every_contract_table_column_and_constraint(
    empty_db_url: str,
) -> None:
    with psycopg.connect(empty_db_url) as conn:
        applied = migrate(conn, MIGRATIONS)
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS]
        found = columns(conn)
        for table, expected in CONTRACT_COLUMNS.items():
            assert table in found, f"missing table {table}"
            assert expected <= found[table], f"{table} lacks {expected - found[table]}"
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")}
        assert indexes >= CONTRACT_INDEXES
        fks = set(
            conn.execute(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                "WHERE contype = 'f'"
            ).fetchall()
        )
        assert fks >= CONTRACT_FOREIGN_KEYS
        assert not fks & DROPPED_FOREIGN_KEYS
        uniques = set(
            conn.execute(
                "SELECT c.conrelid::regclass::text, string_agg(a.attname, ',' ORDER BY k.n) "
                "FROM pg_constraint c "
                "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(att, n) "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.att "
                "WHERE c.contype = 'u' GROUP BY c.oid, c.conrelid"
            ).fetchall()
        )
        assert uniques >= CONTRACT_UNIQUES
        subjects = {r[0]: r[1] for r in conn.execute("SELECT code, archetype FROM subjects")}
        assert {"physics", "math", "history", "english"} <= set(subjects)
        assert set(subjects.values()) <= {"science", "humanities", "language", "skill", "curiosity"}
        # Applying again finds nothing to do.
        assert migrate(conn, MIGRATIONS) == []


def test_reset_recreates_everything_and_reports_time(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO users (id, anon_id) VALUES ('u1', 'a1')")
        conn.commit()
        seconds = reset(conn, MIGRATIONS)
        assert 0 < seconds < 60  # the P0 gate; the figure itself is printed by the CLI
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
        assert pending(conn, MIGRATIONS) == []


def test_changed_migration_file_is_detected_not_reapplied(db_url: str, tmp_path: Path) -> None:
    original = MIGRATIONS[0]
    edited = tmp_path / original.path.name
    shutil.copy(original.path, edited)
    edited.write_text(edited.read_text() + "\n-- an edit after the fact\n")
    tampered = [Migration(original.version, original.name, edited), *MIGRATIONS[1:]]
    with psycopg.connect(db_url) as conn:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(conn, tampered)
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert count == (len(MIGRATIONS),)
