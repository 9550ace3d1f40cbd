"""`omnitutor db bootstrap`: the database and an app role that cannot change the schema."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from eventstore.database import drop_database
from ops.cli import main


@pytest.fixture
def names(pg_admin_url: str) -> Iterator[tuple[str, str]]:
    database, role = f"ot_boot_{os.getpid()}", f"ot_app_{os.getpid()}"
    yield database, role
    drop_database(pg_admin_url, database)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_bootstrap_creates_database_and_a_data_only_role(
    pg_admin_url: str, names: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    database, role = names
    code = main(
        [
            "db",
            "bootstrap",
            "--admin-url",
            pg_admin_url,
            "--database",
            database,
            "--role",
            role,
            "--app-password",
            "pw-for-tests",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"postgresql://{role}:pw-for-tests@")
    app_url = make_conninfo(pg_admin_url, dbname=database, user=role, password="pw-for-tests")
    with psycopg.connect(app_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, anon_id) VALUES ('u1', 'a1')")
        conn.execute("UPDATE users SET email = 'x@example.com' WHERE id = 'u1'")
        conn.execute("INSERT INTO events (id, type) VALUES ('e1', 'lesson.created')")
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
        for statement in (
            "CREATE TABLE sneaky (id int)",
            "ALTER TABLE users ADD COLUMN sneaky int",
            "DROP TABLE users",
            "UPDATE events SET type = 'x'",
            "DELETE FROM events",
            "TRUNCATE events",
        ):
            with pytest.raises((errors.InsufficientPrivilege, errors.UndefinedTable)):
                conn.execute(statement)
    # Running it again changes nothing and succeeds.
    assert (
        main(
            ["db", "bootstrap", "--admin-url", pg_admin_url, "--database", database, "--role", role]
        )
        == 0
    )
