-- Rebuilding projections into shadow tables and swapping them in. Identifiers come in as
-- `{name}` placeholders composed with psycopg.sql.

-- name: rebuild_lock
SELECT pg_try_advisory_lock(hashtextextended('omnitutor.projections.rebuild', 0));

-- name: rebuild_unlock
SELECT pg_advisory_unlock(hashtextextended('omnitutor.projections.rebuild', 0));

-- name: rebuild_holder
SELECT l.pid FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint)
      = hashtextextended('omnitutor.projections.rebuild', 0);

-- name: table_exists
SELECT to_regclass(%(name)s) IS NOT NULL;

-- name: drop_table
DROP TABLE IF EXISTS {table};

-- name: create_shadow
-- Columns, defaults, CHECK constraints and indexes (primary and unique keys included); the
-- foreign keys are added separately, pointing at shadows where the parent is rebuilt too.
CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL);

-- name: foreign_keys
-- Foreign keys touching the given tables: (name, table, columns, parent, parent columns,
-- on delete, on update).
SELECT c.conname, t.relname,
       array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       p.relname,
       array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i),
       c.confdeltype::text, c.confupdtype::text
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_class p ON p.oid = c.confrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE c.contype = 'f' AND n.nspname = current_schema()
  AND (t.relname = ANY(%(tables)s::text[]) OR p.relname = ANY(%(tables)s::text[]))
ORDER BY t.relname, c.conname;

-- name: add_foreign_key
ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({columns})
  REFERENCES {parent} ({parent_columns}) ON DELETE {on_delete} ON UPDATE {on_update};

-- name: add_foreign_key_not_valid
-- Re-pointing another table's key at a swapped-in table: checked afterwards (VALIDATE), so
-- the swap does not scan that table while it holds its locks.
ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({columns})
  REFERENCES {parent} ({parent_columns}) ON DELETE {on_delete} ON UPDATE {on_update}
  NOT VALID;

-- name: validate_foreign_key
ALTER TABLE {table} VALIDATE CONSTRAINT {name};

-- name: drop_constraint
ALTER TABLE {table} DROP CONSTRAINT {name};

-- name: indexes
-- A table's indexes by what they index (the definition without index and table names).
SELECT i.relname,
       regexp_replace(pg_get_indexdef(x.indexrelid), '^CREATE (UNIQUE )?INDEX \S+ ON \S+ ', ''),
       x.indisunique, x.indisprimary
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = to_regclass(%(table)s)
ORDER BY i.relname;

-- name: rename_table
ALTER TABLE {table} RENAME TO {name};

-- name: rename_index
ALTER INDEX {index} RENAME TO {name};

-- name: lock_tables
LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE;

-- name: short_lock_timeout
SET LOCAL lock_timeout = '100ms';

-- name: no_lock_timeout
SET LOCAL lock_timeout = 0;

-- name: role_exists
SELECT 1 FROM pg_roles WHERE rolname = %(role)s;

-- name: grant_app
GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role};

-- name: rebuild_positions
SELECT name, position FROM projection_rebuilds WHERE name = ANY(%(names)s::text[])
ORDER BY name
FOR UPDATE;

-- name: start_rebuild
INSERT INTO projection_rebuilds (name, position) VALUES (%(name)s, 0)
ON CONFLICT (name) DO UPDATE SET position = 0, started_at = NOW(), updated_at = NOW();

-- name: advance_rebuild
UPDATE projection_rebuilds SET position = %(position)s, updated_at = clock_timestamp()
WHERE name = ANY(%(names)s::text[]);

-- name: finish_rebuild
DELETE FROM projection_rebuilds WHERE name = ANY(%(names)s::text[]);

-- name: lock_live_checkpoints
SELECT name, position FROM projection_checkpoints WHERE name = ANY(%(names)s::text[])
ORDER BY name
FOR UPDATE;

-- name: swap_checkpoints
UPDATE projection_checkpoints
SET position = %(position)s,
    state = CASE WHEN state = 'stopped' THEN 'stopped' ELSE 'running' END,
    error = NULL, failed_position = NULL, updated_at = clock_timestamp()
WHERE name = ANY(%(names)s::text[]);

-- name: skips_between
SELECT name, position FROM projection_skips
WHERE name = ANY(%(names)s::text[]) AND position > %(after)s AND position <= %(upto)s;

-- name: count_rows
SELECT count(*) FROM {table};
