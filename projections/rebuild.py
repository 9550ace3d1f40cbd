"""Rebuild projections from position 0 into shadow tables, then swap them in at once.

    shadow = CREATE TABLE x_shadow (LIKE x INCLUDING ALL) + x's foreign keys, pointing at
             the shadows of parents rebuilt together and at the live tables of the others
    pages  = the same handlers the runner uses, applied to the shadows, one transaction per
             page together with the rebuild's own checkpoint (projection_rebuilds), so an
             interrupted rebuild resumes where it stopped
    swap   = one transaction: lock the live checkpoints (the runner waits), apply the last
             few events, drop the live tables, rename the shadows (and their indexes) to the
             live names, re-point foreign keys from other tables, move the live checkpoints

The API keeps answering from the live tables the whole time; the swap holds its exclusive
locks for milliseconds. Events an operator skipped (projection_skips) are skipped here too,
so the rebuilt tables equal the live ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from psycopg import errors as pgerr

from eventstore.database import Pool
from eventstore.errors import StoreError, translate_errors
from eventstore.migrations import APP_ROLE
from eventstore.queries import load_queries
from eventstore.store import StoredEvent, head_position_in, read_types_page
from projections.catalog import select
from projections.checkpoints import ensure_checkpoints
from projections.core import SHADOW_SUFFIX, Projection, Tables
from projections.errors import RebuildBusy, RebuildFailed

_Q = load_queries(Path(__file__).parent / "sql" / "rebuild.sql")
log = structlog.get_logger(__name__)
Conn = AsyncConnection[Any]
ProgressListener = Callable[[int, int], None]  # (events done, events in all)

SWAP_LOCK_ATTEMPTS = 200
_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


CATCH_UP_ROUNDS = 3


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    on_delete: str
    on_update: str

    def add(self, table: str, parent: str, *, valid: bool) -> sql.Composed:
        query = _Q["add_foreign_key"] if valid else _Q["add_foreign_key_not_valid"]
        return sql.SQL(query).format(
            table=sql.Identifier(table),
            name=sql.Identifier(self.name),
            columns=sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            parent=sql.Identifier(parent),
            parent_columns=sql.SQL(", ").join(map(sql.Identifier, self.parent_columns)),
            on_delete=sql.SQL(_ACTIONS[self.on_delete]),
            on_update=sql.SQL(_ACTIONS[self.on_update]),
        )


@dataclass
class RebuildResult:
    projections: tuple[str, ...]
    events: int  # events read from the log (of the types the projections read)
    positions: int  # log positions covered
    seconds: float
    resumed_from: int
    position: int  # the checkpoint the live tables now have
    rows: dict[str, int] = field(default_factory=dict)
    per_projection_s: dict[str, float] = field(default_factory=dict)


class Rebuild:
    def __init__(
        self,
        pool: Pool,
        projections: Iterable[str] | None = None,
        *,
        page_size: int = 5000,
        restart: bool = False,
        on_progress: ProgressListener | None = None,
        app_role: str = APP_ROLE,
    ) -> None:
        self.pool = pool
        self.projections: tuple[Projection, ...] = select(projections)
        self.names = [p.name for p in self.projections]
        self.tables = [t for p in self.projections for t in p.tables]
        self.page_size = page_size
        self.restart = restart
        self.on_progress = on_progress
        self.app_role = app_role
        self._shadow = {p.name: Tables.shadow(p.tables) for p in self.projections}
        self._types = frozenset(t for p in self.projections for t in p.event_types)
        self._handler_s = {p.name: 0.0 for p in self.projections}
        self._careful_until = 0
        self._external: list[ForeignKey] = []

    async def run(self) -> RebuildResult:
        started = time.perf_counter()
        with translate_errors():
            async with self.pool.connection() as conn:
                # A session lock: it outlives the transactions below, and goes with the
                # connection if this process dies.
                row = await (await conn.execute(_Q["rebuild_lock"])).fetchone()
                if not (row and row[0]):
                    holder = await (await conn.execute(_Q["rebuild_holder"])).fetchone()
                    await conn.rollback()
                    raise RebuildBusy(
                        "another rebuild is running"
                        + (f" (database backend pid {holder[0]})" if holder else "")
                    )
                await conn.commit()
                try:
                    return await self._run(conn, started)
                finally:
                    await conn.rollback()  # whatever an interruption left open
                    await conn.execute(_Q["rebuild_unlock"])
                    await conn.commit()

    async def _run(self, conn: Conn, started: float) -> RebuildResult:
        async with conn.transaction():
            await ensure_checkpoints(conn, self.names)
        resumed_from = await self._prepare(conn)
        position, events = resumed_from, 0
        total = 0
        # Catch up in rounds, each to the head as it stood when the round began, so a log
        # that keeps growing cannot keep the rebuild chasing it: after CATCH_UP_ROUNDS the
        # swap applies what is left, up to the head it reads once.
        for _ in range(CATCH_UP_ROUNDS):
            target = await self._head(conn)
            total = max(total, target - resumed_from)
            if target - position <= self.page_size:
                break  # the tail is applied inside the swap transaction
            while position < target:
                try:
                    async with conn.transaction():
                        position, n = await self._page(conn, target)
                        events += n
                except _Retry:
                    continue
                self._progress(position - resumed_from, total)
        while True:
            try:
                async with conn.transaction():
                    position, n = await self._swap(conn)
                    events += n
                break
            except _Retry:
                continue
        self._progress(position - resumed_from, max(total, position - resumed_from))
        await self._validate(conn, self._external)
        rows = {}
        for table in self.tables:
            query = sql.SQL(_Q["count_rows"]).format(table=sql.Identifier(table))
            row = await (await conn.execute(query)).fetchone()
            rows[table] = int(row[0]) if row else 0
        await conn.commit()
        return RebuildResult(
            projections=tuple(self.names),
            events=events,
            positions=position - resumed_from,
            seconds=time.perf_counter() - started,
            resumed_from=resumed_from,
            position=position,
            rows=rows,
            per_projection_s=dict(self._handler_s),
        )

    async def _head(self, conn: Conn) -> int:
        async with conn.transaction():
            return await head_position_in(conn)

    def _progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    # -- shadows -----------------------------------------------------------------------

    async def _prepare(self, conn: Conn) -> int:
        """Resume a rebuild of exactly these projections, or create fresh shadows at 0."""
        async with conn.transaction():
            rows = await (
                await conn.execute(_Q["rebuild_positions"], {"names": self.names})
            ).fetchall()
            positions = {str(r[0]): int(r[1]) for r in rows}
            shadows_exist = True
            for table in self.tables:
                found = await (
                    await conn.execute(_Q["table_exists"], {"name": table + SHADOW_SUFFIX})
                ).fetchone()
                shadows_exist = shadows_exist and bool(found and found[0])
            if (
                not self.restart
                and shadows_exist
                and set(positions) == set(self.names)
                and len(set(positions.values())) == 1
            ):
                position = next(iter(positions.values()))
                log.info("resuming rebuild", projections=self.names, position=position)
                return position
            for table in reversed(self.tables):  # children first
                await conn.execute(
                    sql.SQL(_Q["drop_table"]).format(table=sql.Identifier(table + SHADOW_SUFFIX))
                )
            for table in self.tables:
                await conn.execute(
                    sql.SQL(_Q["create_shadow"]).format(
                        shadow=sql.Identifier(table + SHADOW_SUFFIX), table=sql.Identifier(table)
                    )
                )
            for fk in await self._foreign_keys(conn):
                if fk.table in self.tables:
                    parent = fk.parent + SHADOW_SUFFIX if fk.parent in self.tables else fk.parent
                    await conn.execute(fk.add(fk.table + SHADOW_SUFFIX, parent, valid=True))
            for name in self.names:
                await conn.execute(_Q["start_rebuild"], {"name": name})
        return 0

    async def _foreign_keys(self, conn: Conn) -> list[ForeignKey]:
        rows = await (await conn.execute(_Q["foreign_keys"], {"tables": self.tables})).fetchall()
        return [
            ForeignKey(r[0], r[1], tuple(r[2]), r[3], tuple(r[4]), r[5], r[6])
            for r in rows
            if not str(r[1]).endswith(SHADOW_SUFFIX) and not str(r[3]).endswith(SHADOW_SUFFIX)
        ]

    # -- pages -------------------------------------------------------------------------

    async def _page(self, conn: Conn, head: int) -> tuple[int, int]:
        """Apply the next page to the shadows (inside the caller's transaction)."""
        rows = await (await conn.execute(_Q["rebuild_positions"], {"names": self.names})).fetchall()
        position = min(int(r[1]) for r in rows)
        limit = 1 if position < self._careful_until else self.page_size
        events = await read_types_page(conn, position, head, self._types, limit)
        new_position = int(events[-1].position or 0) if len(events) == limit else head
        skips = await (
            await conn.execute(
                _Q["skips_between"],
                {"names": self.names, "after": position, "upto": new_position},
            )
        ).fetchall()
        skipped = {(str(r[0]), int(r[1])) for r in skips}
        for p in self.projections:
            mine = [e for e in events if (p.name, e.position) not in skipped and p.accepts(e)]
            await self._apply(conn, p, mine, limit)
        await conn.execute(_Q["advance_rebuild"], {"names": self.names, "position": new_position})
        return new_position, len(events)

    async def _apply(
        self, conn: Conn, p: Projection, events: Sequence[StoredEvent], limit: int
    ) -> None:
        t0 = time.perf_counter()
        try:
            async with conn.transaction():  # a savepoint: a failure here names its event
                await p.apply(conn, self._shadow[p.name], events)
        except Exception as e:
            if len(events) > 1:
                # Narrow the failure down to one event: re-read this page one event at a time.
                self._careful_until = int(events[-1].position or 0)
                raise _Retry from e
            position = int(events[0].position or 0) if events else 0
            raise RebuildFailed(p.name, position, f"{type(e).__name__}: {e}") from e
        finally:
            self._handler_s[p.name] += time.perf_counter() - t0

    # -- swap --------------------------------------------------------------------------

    async def _swap(self, conn: Conn) -> tuple[int, int]:
        """Catch up and swap the shadows in (inside the caller's transaction)."""
        await conn.execute(_Q["lock_live_checkpoints"], {"names": self.names})
        events = 0
        head = await head_position_in(conn)  # once: later events are the live runner's
        while True:
            rows = await (
                await conn.execute(_Q["rebuild_positions"], {"names": self.names})
            ).fetchall()
            position = min(int(r[1]) for r in rows)
            if position >= head:
                break
            _, n = await self._page(conn, head)
            events += n
        fks = await self._foreign_keys(conn)
        external = [fk for fk in fks if fk.table not in self.tables and fk.parent in self.tables]
        self._external = external
        others = sorted({fk.table for fk in external})
        await self._lock_tables(conn, [*others, *reversed(self.tables)])
        old_indexes = {t: await self._indexes(conn, t) for t in self.tables}
        for fk in external:
            await conn.execute(
                sql.SQL(_Q["drop_constraint"]).format(
                    table=sql.Identifier(fk.table), name=sql.Identifier(fk.name)
                )
            )
        for table in reversed(self.tables):
            await conn.execute(sql.SQL(_Q["drop_table"]).format(table=sql.Identifier(table)))
        for table in self.tables:
            await conn.execute(
                sql.SQL(_Q["rename_table"]).format(
                    table=sql.Identifier(table + SHADOW_SUFFIX), name=sql.Identifier(table)
                )
            )
            old = {sig: name for name, sig in old_indexes[table]}
            for name, sig in await self._indexes(conn, table):
                if sig in old and old[sig] != name:
                    await conn.execute(
                        sql.SQL(_Q["rename_index"]).format(
                            index=sql.Identifier(name), name=sql.Identifier(old[sig])
                        )
                    )
        for fk in external:
            await conn.execute(fk.add(fk.table, fk.parent, valid=False))
        if await (await conn.execute(_Q["role_exists"], {"role": self.app_role})).fetchone():
            for table in self.tables:
                await conn.execute(
                    sql.SQL(_Q["grant_app"]).format(
                        table=sql.Identifier(table), role=sql.Identifier(self.app_role)
                    )
                )
        await conn.execute(_Q["swap_checkpoints"], {"names": self.names, "position": head})
        await conn.execute(_Q["finish_rebuild"], {"names": self.names})
        log.info("rebuild swapped in", projections=self.names, position=head)
        return head, events

    async def _lock_tables(self, conn: Conn, tables: Sequence[str]) -> None:
        """Take the swap's exclusive locks without ever waiting long while holding some.

        A reader may hold one of these tables and be about to read another that the swap
        already locked; waiting on it would deadlock, and the deadlock detector might cancel
        the reader. With a short lock_timeout the swap gives way instead (rolls back to a
        savepoint, lets the readers through) and tries again.
        """
        lock = sql.SQL(_Q["lock_tables"]).format(
            tables=sql.SQL(", ").join(map(sql.Identifier, tables))
        )
        for attempt in range(SWAP_LOCK_ATTEMPTS):
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute(_Q["short_lock_timeout"])
                    await conn.execute(lock)
                    await conn.execute(_Q["no_lock_timeout"])
                return
            except pgerr.LockNotAvailable:
                await asyncio.sleep(min(0.01 * (attempt + 1), 0.2))
        raise RebuildBusy(f"could not lock {', '.join(tables)} for the swap; try again")

    async def _indexes(self, conn: Conn, table: str) -> list[tuple[str, tuple[Any, ...]]]:
        rows = await (await conn.execute(_Q["indexes"], {"table": table})).fetchall()
        return [(str(r[0]), (r[1], r[2], r[3])) for r in rows]

    async def _validate(self, conn: Conn, external: Sequence[ForeignKey]) -> None:
        """Check the foreign keys re-added NOT VALID, without blocking readers or writers."""
        for fk in external:
            query = sql.SQL(_Q["validate_foreign_key"]).format(
                table=sql.Identifier(fk.table), name=sql.Identifier(fk.name)
            )
            try:
                with translate_errors():
                    async with conn.transaction():
                        await conn.execute(query)
            except StoreError as e:  # the data is usable; say so loudly and carry on
                log.error("foreign key does not hold after rebuild", fk=fk.name, error=str(e))


class _Retry(Exception):
    """Internal: a page failed and is being re-read one event at a time."""
