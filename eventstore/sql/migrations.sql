-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    INT PRIMARY KEY,
  name       TEXT NOT NULL,
  checksum   TEXT NOT NULL,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- name: applied_migrations
SELECT version, checksum FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: lock
SELECT pg_advisory_lock(%(key)s);

-- name: unlock
SELECT pg_advisory_unlock(%(key)s);

-- name: role_exists
SELECT 1 FROM pg_roles WHERE rolname = %(role)s;

-- name: drop_schema
DROP SCHEMA IF EXISTS public CASCADE;

-- name: create_schema
CREATE SCHEMA public;

-- name: migrations_table_exists
SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_migrations';
