"""The pool's connection check (eventstore/database.py): free for a healthy connection,
and a connection the server ended while it sat idle in the pool never reaches a caller."""

from __future__ import annotations

import os
import resource
import select
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from eventstore.database import ResilientPool, open_pool
from tests.conditions import wait_for_async

pytestmark = pytest.mark.anyio


async def test_connections_the_server_ended_are_replaced_before_use(db_url: str) -> None:
    async with open_pool(db_url, min_size=3, max_size=3) as pool:
        await pool.wait()
        pids = set()
        async with pool.connection() as a, pool.connection() as b, pool.connection() as c:
            for conn in (a, b, c):
                pids.add(conn.info.backend_pid)
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(pids),)
            )

            def ended() -> bool:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)
                ).fetchone()
                return row is not None and row[0] == 0

            await wait_for_async(_async(ended), what="the terminated backends to go")
        # Every caller gets a working connection: the ended ones were checked and replaced.
        for _ in range(6):
            async with pool.connection() as conn:
                row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
                assert row is not None
                assert row[0] not in pids


async def test_the_check_sends_nothing_on_a_healthy_connection(db_url: str, tmp_path: Path) -> None:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await conn.execute("SELECT 1")
        await conn.rollback()
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as f:
            conn.pgconn.trace(f.fileno())  # libpq writes every protocol message here
            await ResilientPool.check_connection(conn)
            conn.pgconn.untrace()
        assert trace.read_text() == ""
        # The same check on a connection the server ended raises (the pool replaces it).
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        await wait_for_async(lambda: _readable(conn), what="the termination to arrive")
        with pytest.raises(psycopg.OperationalError):
            await ResilientPool.check_connection(conn)


async def _readable(conn: psycopg.AsyncConnection[Any]) -> bool:
    return bool(select.select([conn.pgconn.socket], [], [], 0)[0])


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


async def test_the_check_works_on_a_descriptor_past_1024(db_url: str) -> None:
    # A process holding thousands of streams opens its pool connections past select()'s
    # limit (FD_SETSIZE): the check must still answer, not raise ValueError.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            assert conn.pgconn.socket > 1024
            await ResilientPool.check_connection(conn)  # healthy: no error, no round trip
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
