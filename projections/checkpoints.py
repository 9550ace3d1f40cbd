"""Checkpoints seen from outside the runner: status, skip, stop/start, read-your-writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from eventstore.database import Pool
from eventstore.errors import translate_errors
from eventstore.queries import load_queries
from projections.catalog import BY_NAME, select
from projections.errors import SkipRefused

_Q = load_queries(Path(__file__).parent / "sql" / "checkpoints.sql")


def lock_key(name: str) -> str:
    """The advisory-lock key (hashed in SQL) of the runner that owns projection `name`."""
    return f"omnitutor.projection.{name}"


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int
    state: str  # running | stopped | failed
    error: str | None
    failed_position: int | None
    updated_at: datetime
    lag_events: int
    lag_s: float
    owner_pid: int | None  # the database backend holding the runner lock (None: nobody)
    rebuild_position: int | None  # a rebuild in progress has got this far


async def ensure_checkpoints(conn: AsyncConnection[Any], names: Iterable[str]) -> None:
    with translate_errors():
        await conn.execute(_Q["ensure_checkpoints"], {"names": sorted(names)})


async def status(pool: Pool) -> list[ProjectionStatus]:
    with translate_errors():
        async with pool.connection() as conn:
            await ensure_checkpoints(conn, BY_NAME)
            rows = await (await conn.execute(_Q["status"])).fetchall()
    return [ProjectionStatus(*r) for r in rows]


async def failures(pool: Pool) -> list[ProjectionStatus]:
    return [s for s in await status(pool) if s.state == "failed"]


async def skip(pool: Pool, name: str, position: int) -> int:
    """Skip the event a failed projection stopped at; returns the new checkpoint.

    Only the failed position can be skipped (anything else is refused and changes nothing),
    and the skip is recorded so that a rebuild skips the same event.
    """
    select([name])
    with translate_errors():
        async with pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(_Q["lock_checkpoint"], {"name": name})).fetchone()
            if row is None:
                raise SkipRefused(f"projection {name} has no checkpoint yet; nothing to skip")
            current, state, failed_position, error = row
            if state != "failed" or failed_position is None:
                raise SkipRefused(
                    f"projection {name} is {state} at position {current}, not failed; "
                    "only the event a projection failed at can be skipped"
                )
            if position != failed_position:
                raise SkipRefused(
                    f"projection {name} failed at position {failed_position}, not {position}"
                )
            await conn.execute(
                _Q["record_skip"], {"name": name, "position": position, "error": error}
            )
            await conn.execute(_Q["advance_checkpoint"], {"name": name, "position": position})
    return position


async def set_state(pool: Pool, name: str, state: str) -> int:
    """Stop a projection (`stopped`: its runner leaves it alone) or start it again."""
    select([name])
    if state not in {"running", "stopped"}:
        raise ValueError(f"state must be running or stopped, not {state!r}")
    with translate_errors():
        async with pool.connection() as conn:
            await ensure_checkpoints(conn, BY_NAME)
            row = await (
                await conn.execute(_Q["set_state"], {"name": name, "state": state})
            ).fetchone()
    return int(row[0]) if row else 0


async def wait_for(
    pool: Pool,
    position: int,
    projections: Iterable[str] | None = None,
    timeout: float = 2.0,  # noqa: ASYNC109  # the bound is the API: it returns False, not raises
    interval: float = 0.01,
) -> bool:
    """Wait until every named projection (all by default) has applied `position`.

    Read-your-writes for the API: after an append whose position is known, a read of the
    projected tables waits here first. Returns False when the bound passes, or at once if a
    projection is failed or stopped short of the position (it would never get there).
    """
    names = [p.name for p in select(projections)]
    deadline = time.monotonic() + timeout
    while True:
        with translate_errors():
            async with pool.connection() as conn:
                rows = await (await conn.execute(_Q["positions"], {"names": names})).fetchall()
        if len(rows) == len(names) and all(int(r[1]) >= position for r in rows):
            return True
        if any(r[2] != "running" for r in rows):
            return False
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)  # polling the checkpoint with a deadline
