-- Administration: databases and roles. Identifiers are composed with psycopg.sql.

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s;

-- name: create_database
CREATE DATABASE {name};

-- name: create_database_from
CREATE DATABASE {name} TEMPLATE {template};

-- name: drop_database
DROP DATABASE IF EXISTS {name} WITH (FORCE);

-- name: role_exists
SELECT 1 FROM pg_roles WHERE rolname = %(role)s;

-- name: create_login_role
CREATE ROLE {role} LOGIN PASSWORD {password};

-- name: create_owner_role
CREATE ROLE {role} NOLOGIN;

-- name: grant_connect
GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role};

-- name: revoke_public_create
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- name: count_tables
SELECT count(*) FROM pg_tables WHERE schemaname = current_schema();
