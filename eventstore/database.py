"""Which PostgreSQL the service talks to: the configured one, or an embedded default.

With a DATABASE_URL the service uses that server (PostgreSQL 15+). Without one it runs an
embedded PostgreSQL 16 from the `pgserver` wheel, with its data under OMNITUTOR_HOME, so a
fresh machine needs nothing installed. The embedded server listens on a Unix socket only.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import psycopg.types.json
import structlog
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

from eventstore.errors import translate_errors
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "admin.sql")

Pool = AsyncConnectionPool[AsyncConnection[Any]]  # the one pool type every layer passes
DATABASE_NAME = "omnitutor"
log = structlog.get_logger(__name__)


@contextmanager
def database_url(
    configured: str | None, home: Path, *, keep_running: bool = False
) -> Iterator[str]:
    """Yield the URL of the database to use, starting the embedded one if none is configured.

    The embedded server is stopped when the block exits, unless `keep_running` (as for
    `omnitutor db url`, whose caller connects after this process has gone).
    """
    if configured:
        yield configured
        return
    pgdata = home.resolve() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _embedded_server(pgdata, cleanup_mode=None if keep_running else "stop")
    try:
        _ensure_database(server.get_uri("postgres"), DATABASE_NAME)
        url: str = server.get_uri(DATABASE_NAME)
        log.info("embedded postgres ready", pgdata=str(pgdata))
        yield url
    finally:
        if not keep_running:
            server.cleanup()


# The log is acknowledged only once its commit is on disk; a server configured with
# synchronous_commit=off would lose acknowledged events in a crash. Set at connection start.
# DateStyle ISO: the store reads timestamps as text and parses them as ISO 8601.
CONNECTION_OPTIONS = {"options": "-c synchronous_commit=on -c DateStyle=ISO"}


async def configure_connection(conn: AsyncConnection[Any]) -> None:
    """Per-connection set-up: orjson decodes jsonb."""
    psycopg.types.json.set_json_loads(orjson.loads, conn)


@asynccontextmanager
async def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 4, name: str | None = None
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[Any]]]:
    """The one way to get a connection pool: durable commits, orjson, closed on exit."""
    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        configure=configure_connection,
        kwargs=CONNECTION_OPTIONS,
        name=name,
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def autocommit(pool: Pool) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled connection in autocommit, for statements that stand on their own: one round
    trip each instead of three (BEGIN, statement, COMMIT). It goes back as it came."""
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            try:
                await conn.set_autocommit(False)
            except psycopg.Error:
                await conn.close()  # mid-statement (cancelled): never hand it out as is


def stop_embedded(home: Path) -> bool:
    """Stop an embedded server left running under `home`; False if none was running."""
    pgdata = home.resolve() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    _embedded_server(pgdata, cleanup_mode="stop").cleanup()
    return True


def _embedded_server(pgdata: Path, cleanup_mode: str | None) -> PostgresServer:
    with warnings.catch_warnings():
        # pgserver asks platformdirs for XDG_RUNTIME_DIR when it is imported; servers and CI
        # rarely set it, and the fallback (a private directory under /tmp) is fine.
        warnings.simplefilter("ignore", UserWarning)
        from pgserver.postgres_server import get_server  # deferred: only needed here

        return get_server(pgdata, cleanup_mode=cleanup_mode)


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    """(Re)create database `name`, empty or copied from `template`; returns its URL."""
    with translate_errors(), psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL(_Q["drop_database"]).format(name=sql.Identifier(name)))
        if template is None:
            conn.execute(sql.SQL(_Q["create_database"]).format(name=sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL(_Q["create_database_from"]).format(
                    name=sql.Identifier(name), template=sql.Identifier(template)
                )
            )
    return make_conninfo(admin_url, dbname=name)


def drop_database(admin_url: str, name: str) -> None:
    with translate_errors(), psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL(_Q["drop_database"]).format(name=sql.Identifier(name)))


def _ensure_database(admin_url: str, name: str) -> None:
    with translate_errors(), psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute(_Q["database_exists"], {"name": name}).fetchone() is None:
            conn.execute(sql.SQL(_Q["create_database"]).format(name=sql.Identifier(name)))
