-- Backup and restore: what is in a database, and how to clear it. Identifiers via psycopg.sql.

-- name: user_relations
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND n.nspname NOT LIKE 'pg\_temp%'
  -- objects that belong to an extension come back with the extension
  AND NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
  )
ORDER BY 1;

-- name: user_schemas
SELECT nspname FROM pg_namespace
WHERE nspname NOT IN ('pg_catalog', 'information_schema')
  AND nspname NOT LIKE 'pg\_toast%'
  AND nspname NOT LIKE 'pg\_temp%'
ORDER BY 1;

-- name: drop_schema
DROP SCHEMA IF EXISTS {name} CASCADE;

-- name: create_public_schema
CREATE SCHEMA public;

-- name: public_tables
SELECT c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
ORDER BY 1;

-- name: count_rows
SELECT count(*) FROM public.{table};
