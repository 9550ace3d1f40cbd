"""Which PostgreSQL the service talks to: the configured one, or an embedded default.

With a DATABASE_URL the service uses that server (PostgreSQL 15+). Without one it runs an
embedded PostgreSQL 16 from the `pgserver` wheel, with its data under OMNITUTOR_HOME, so a
fresh machine needs nothing installed. The embedded server listens on a Unix socket only.
"""

from __future__ import annotations

import select
import time
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
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

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


# While the database is unreachable a request waits this long for a connection, then fails
# (DatabaseUnavailable, a 503 with Retry-After), instead of the pool's usual 30 s.
OUTAGE_WAIT_S = 0.5
# Reconnection attempts while the database is down: psycopg_pool doubles its delay from 1 s
# without bound (an 8 s outage took 6 s more to notice the database was back); ours are
# capped so the pool is whole again within this long after the database returns.
RECONNECT_MAX_DELAY_S = 0.5


class _PromptReconnect(AttemptWithBackoff):
    INITIAL_DELAY = 0.1

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_DELAY_S)


class ResilientPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """psycopg's pool, failing fast during an outage and reconnecting promptly after it.

    Every connection is checked as it leaves the pool (`check_connection`: no round trip
    unless the server has said something on it), so connections broken by a database
    restart are replaced instead of failing a request each. A request
    waits for a connection in slices of OUTAGE_WAIT_S: after a slice it gives up if the
    database is unreachable (the last connection attempt failed, or a connection broke),
    and otherwise (a busy pool) waits on, up to the usual timeout.
    """

    unreachable = False

    @staticmethod
    async def check_connection(conn: AsyncConnection[Any]) -> None:
        """No round trip for a healthy idle connection. A server that ends a connection
        (restart, crash, idle timeout) leaves a termination message or an EOF on its socket,
        and nothing else arrives on an idle pooled connection (LISTEN has its own), so only a
        readable socket pays for the full check, which then fails and replaces it."""
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        # poll, not select: a process holding thousands of streams gives its pool connections
        # descriptors past select's limit of 1024 (a ValueError on every checkout).
        waiting = select.poll()
        waiting.register(conn.pgconn.socket, select.POLLIN)
        if waiting.poll(0):
            await AsyncConnectionPool.check_connection(conn)

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:  # noqa: ASYNC109  # psycopg_pool's signature
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            try:
                conn = await super().getconn(max(0.0, min(remaining, OUTAGE_WAIT_S)))
            except PoolTimeout:
                if self.unreachable or remaining <= OUTAGE_WAIT_S:
                    raise
                continue
            self.unreachable = False
            return conn

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        if conn.broken:
            self.unreachable = True
        await super().putconn(conn)

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[Any]:  # noqa: ASYNC109  # psycopg_pool's signature
        # Private in psycopg_pool (3.1-3.3): every new connection, for growth or reconnection.
        try:
            conn = await super()._connect(timeout)
        except psycopg.OperationalError:
            self.unreachable = True
            raise
        self.unreachable = False
        return conn

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        # Private in psycopg_pool (3.1-3.3): the one place its reconnection backoff is made.
        await super()._add_connection(
            attempt or _PromptReconnect(timeout=self.reconnect_timeout), growing
        )


@asynccontextmanager
async def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 4, name: str | None = None
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[Any]]]:
    """The one way to get a connection pool: durable commits, orjson, closed on exit."""
    pool = ResilientPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        configure=configure_connection,
        kwargs=CONNECTION_OPTIONS,
        name=name,
        check=ResilientPool.check_connection,
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
