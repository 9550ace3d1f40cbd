"""The projection runner: keeps each projection's tables up to date with the log.

One loop per projection. A loop applies a page of events per transaction: it locks the
projection's checkpoint row, reads the events after it, applies them with the projection's
handler, and moves the checkpoint, all in that one transaction (exactly once: a crash
anywhere leaves rows and checkpoint together). Between pages it sleeps until `wake()` (the
seam for the log's wake-ups: the in-process sequencer, later the hub) or a short poll.

Across processes each projection is run by one process at a time: the owner holds a session
advisory lock on a dedicated connection, and the others retry every `lock_retry_s`. When the
owner dies its connection closes, the lock goes, and another process takes over. The lock is
about not wasting work; correctness never depends on it, because every page starts by
locking the checkpoint row and re-reading the position.

A handler failure (a poison event) stops only that projection: the runner narrows the failing
page down to the one event, records its position and error (state `failed`), and retries it
every `failed_retry_s` — so it resumes by itself after a fix — until an operator skips it
(`omnitutor projections skip`). Database outages are not poison: they are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg import errors as pgerr

from eventstore.database import Pool
from eventstore.errors import DatabaseUnavailable, StoreError, translate_errors
from eventstore.queries import load_queries
from eventstore.store import StoredEvent, head_position_in, read_types_page
from projections.catalog import select
from projections.checkpoints import ensure_checkpoints, lock_key
from projections.core import Projection, Tables

_Q = load_queries(Path(__file__).parent / "sql" / "checkpoints.sql")
log = structlog.get_logger(__name__)
AppliedListener = Callable[[str, Sequence[StoredEvent], int], None]

_TRANSIENT = (
    pgerr.DeadlockDetected,
    pgerr.SerializationFailure,
    pgerr.LockNotAvailable,
    pgerr.QueryCanceled,
    pgerr.AdminShutdown,
    pgerr.CannotConnectNow,
)


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying as they are (the database, not the event, is the problem)."""
    return isinstance(error, DatabaseUnavailable) or isinstance(error.__cause__, _TRANSIENT)


@dataclass(frozen=True)
class Step:
    """What one pass of a projection loop did."""

    applied: int = 0  # events handed to the handler
    position: int = 0  # the checkpoint afterwards
    more: bool = False  # there is more to do right away
    state: str = "running"


class ProjectionRunner:
    def __init__(
        self,
        pool: Pool,
        projections: Iterable[str | Projection] | None = None,
        *,
        poll_s: float = 0.5,
        page_size: int = 2000,
        lock_retry_s: float = 2.0,
        failed_retry_s: float = 30.0,
        exclusive: bool = True,
        on_applied: AppliedListener | None = None,
    ) -> None:
        self.pool = pool
        self.projections: tuple[Projection, ...] = select(projections)
        self.poll_s = poll_s
        self.page_size = page_size
        self.lock_retry_s = lock_retry_s
        self.failed_retry_s = failed_retry_s
        self.exclusive = exclusive  # False only in tests that race two runners on purpose
        self.on_applied = on_applied
        self._tables = {p.name: Tables.live(p.tables) for p in self.projections}
        self._wakes = {p.name: asyncio.Event() for p in self.projections}
        self._owned: set[str] = set()
        self._next_lock_try: dict[str, float] = {}
        self._careful_until: dict[str, int] = {}  # narrowing a failed page down to one event
        self._next_retry: dict[str, float] = {}
        self._lock_conn: AsyncConnection[Any] | None = None
        self._lock_mutex = asyncio.Lock()

    # -- the seam for wake-ups ---------------------------------------------------------

    def wake(self) -> None:
        """New events may be in the log: every projection loop looks now, not at its poll."""
        for event in self._wakes.values():
            event.set()

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    # -- running -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run every projection until cancelled (a missing checkpoint row is created)."""
        tasks = [
            asyncio.create_task(self._loop(p), name=f"projection:{p.name}")
            for p in self.projections
        ]
        if self.exclusive:
            tasks.append(asyncio.create_task(self._keep_locks(), name="projection-locks"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drop_locks()

    async def catch_up(self) -> dict[str, Step]:
        """Apply until every projection is caught up, stopped or failed (no ownership)."""
        with translate_errors():
            async with self.pool.connection() as conn:
                await ensure_checkpoints(conn, [p.name for p in self.projections])
        result: dict[str, Step] = {}
        for p in self.projections:
            step = await self.step(p)
            while step.more:
                step = await self.step(p)
            result[p.name] = step
        return result

    async def _loop(self, p: Projection) -> None:
        wake = self._wakes[p.name]
        backoff = 0.1
        while True:
            wake.clear()
            if self.exclusive and not await self._own(p.name):
                await _wait(wake, self.lock_retry_s)
                continue
            try:
                step = await self.step(p)
            except StoreError as e:
                log.warning("projection page failed; retrying", projection=p.name, error=str(e))
                await _wait(wake, backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if not step.more:
                await _wait(wake, self.poll_s)

    async def step(self, p: Projection) -> Step:
        """Apply the next page of `p` in one transaction; a poison event is recorded."""
        tables = self._tables[p.name]
        failure: BaseException | None = None
        applied: list[StoredEvent] = []
        position = new_position = head = 0
        state = "running"
        with translate_errors():
            async with self.pool.connection() as conn:
                try:
                    with translate_errors():
                        async with conn.transaction():
                            row = await (
                                await conn.execute(_Q["lock_checkpoint"], {"name": p.name})
                            ).fetchone()
                            if row is None:
                                await ensure_checkpoints(conn, [p.name])
                                return Step(more=True)
                            position, state = int(row[0]), str(row[1])
                            limit = self.page_size
                            careful = self._careful_until.get(p.name)
                            if careful is not None:
                                if position >= careful:
                                    del self._careful_until[p.name]
                                else:
                                    limit = 1
                            if state == "stopped":
                                return Step(position=position, state=state)
                            if state == "failed":
                                if time.monotonic() < self._next_retry.get(p.name, 0.0):
                                    return Step(position=position, state=state)
                                limit = 1
                            head = await head_position_in(conn)
                            if head <= position:
                                return Step(position=position, state=state)
                            events = await read_types_page(
                                conn, position, head, p.event_types, limit
                            )
                            new_position = (
                                int(events[-1].position or 0) if len(events) == limit else head
                            )
                            skips = await self._skips(conn, p.name, position, new_position)
                            applied = [
                                e for e in events if e.position not in skips and p.accepts(e)
                            ]
                            await p.apply(conn, tables, applied)
                            await conn.execute(
                                _Q["advance_checkpoint"],
                                {"name": p.name, "position": new_position},
                            )
                except StoreError as e:
                    if is_transient(e):
                        raise
                    failure = e
                except Exception as e:  # a handler's failure is recorded below, never hidden
                    failure = e
                if failure is not None and not applied:
                    # Not a handler's failure: reading the log or the checkpoint failed.
                    if isinstance(failure, StoreError):
                        raise failure
                    raise StoreError(f"{type(failure).__name__}: {failure}") from failure
                if failure is None:
                    if state == "failed":
                        log.info("projection resumed", projection=p.name, position=new_position)
                    if self.on_applied is not None and applied:
                        self.on_applied(p.name, applied, new_position)
                    return Step(len(applied), new_position, more=new_position < head)
                if len(applied) > 1:
                    # Which event? Re-apply the page one event per transaction to find out.
                    self._careful_until[p.name] = int(applied[-1].position or 0)
                    return Step(position=position, more=True)
                failed_at = int(applied[0].position or 0)
                error = f"{type(failure).__name__}: {failure}"
                self._next_retry[p.name] = time.monotonic() + self.failed_retry_s
                self._careful_until.pop(p.name, None)
                async with conn.transaction():
                    await conn.execute(
                        _Q["record_failure"],
                        {"name": p.name, "position": failed_at, "error": error[:2000]},
                    )
                log.error(
                    "projection stopped at a poison event",
                    projection=p.name,
                    position=failed_at,
                    error=error,
                )
                return Step(position=position, state="failed")

    async def _skips(
        self, conn: AsyncConnection[Any], name: str, after: int, upto: int
    ) -> set[int]:
        cur = await conn.execute(
            _Q["skipped_positions"], {"name": name, "after": after, "upto": upto}
        )
        return {int(r[0]) for r in await cur.fetchall()}

    # -- ownership across processes ----------------------------------------------------

    async def _own(self, name: str) -> bool:
        if name in self._owned:
            return True
        now = time.monotonic()
        if now < self._next_lock_try.get(name, 0.0):
            return False
        self._next_lock_try[name] = now + self.lock_retry_s
        try:
            async with self._lock_mutex:
                with translate_errors():
                    if self._lock_conn is None or self._lock_conn.closed:
                        conninfo = self.pool.conninfo
                        if not isinstance(conninfo, str):
                            raise StoreError("the runner needs a pool opened with a conninfo")
                        self._lock_conn = await AsyncConnection.connect(conninfo, autocommit=True)
                    row = await (
                        await self._lock_conn.execute(_Q["try_lock"], {"key": lock_key(name)})
                    ).fetchone()
        except StoreError as e:
            log.warning("projection lock unavailable", projection=name, error=str(e))
            await self._drop_locks()
            return False
        if row is not None and row[0]:
            self._owned.add(name)
            log.info("projection owned by this process", projection=name)
            return True
        return False

    async def _keep_locks(self) -> None:
        """Notice a lost lock connection (locks gone with it) and stop claiming ownership."""
        while True:
            await asyncio.sleep(self.lock_retry_s)
            if not self._owned:
                continue
            try:
                async with self._lock_mutex:
                    conn = self._lock_conn
                    if conn is None:
                        raise StoreError("the lock connection is gone")
                    with translate_errors():
                        await conn.execute(_Q["ping"])
            except StoreError as e:
                log.warning("projection locks lost", error=str(e), owned=sorted(self._owned))
                await self._drop_locks()

    async def _drop_locks(self) -> None:
        self._owned.clear()
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a connection that may be dead
                await conn.close()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
    # races its timeout, and the lifespan's shutdown would then wait for this loop forever.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
