"""The lesson log: append-only events in one Postgres table.

Two orders, two mechanisms:

* **Per lesson**, `lesson_seq` 1, 2, 3… is enforced by the UNIQUE key (lesson_id, lesson_seq)
  under optimistic concurrency: an append names the seq it expects to follow, and only one
  writer can insert the next number. seq n+1 is only ever inserted by a writer that saw n
  committed, so a reader of one lesson never sees a gap.

* **Globally**, `position` orders everything for catch-up readers (projections, analysts).
  A sequence number taken inside the writer's transaction would become visible in commit
  order, not number order, and a reader remembering "last position seen" would skip the late
  one forever. So writers do not number events at all: they insert with position NULL and
  commit side by side (no global lock, group commit intact). The *sequencer* then numbers
  committed rows: under a transaction-level advisory lock it gives the pending rows the next
  contiguous positions after the current maximum, in insert order, and commits. Sequencer
  transactions run one at a time, so each commit reveals exactly the next range, and a
  reader of `position > n` always sees a complete prefix. Positions are ordinary stored data,
  so a pg_dump/restore into any cluster keeps them (unlike transaction-id filtering), and a
  long-open writer delays only its own events, not everyone's. The cost is one UPDATE per
  event, done in bulk by the sequencer, off the writers' path.

Every process runs a sequencer loop (`Sequencer`): a local append wakes it at once; a slow
poll covers events whose writer died between commit and numbering. One NOTIFY per sequencer
pass (never per append) tells other processes that the global log moved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventstore.errors import (
    DuplicateEventId,
    StoreError,
    UniqueKeyTaken,
    WrongExpectedSeq,
    translate_errors,
)
from eventstore.events import DomainEvent, from_payload, to_payload
from eventstore.ids import new_id
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "store.sql")
SEQUENCER_LOCK_KEY = 0x0717_0001
LOG_CHANNEL = "omnitutor_log"
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EventMeta:
    """Who and what caused an event; stored in metadata_json."""

    trace_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    causation_id: str | None = None

    def as_json(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class NewEvent:
    """An event ready to append. The id (a ULID) is its idempotency key."""

    type: str
    payload: Mapping[str, Any]
    meta: EventMeta = field(default_factory=EventMeta)
    id: str = field(default_factory=new_id)
    type_version: int = 1

    @classmethod
    def of(cls, event: DomainEvent, meta: EventMeta, id: str | None = None) -> NewEvent:
        return cls(
            type=event.TYPE,
            payload=to_payload(event),
            meta=meta,
            id=id or new_id(),
            type_version=event.VERSION,
        )


@dataclass(frozen=True)
class StoredEvent:
    id: str
    position: int | None  # None until the sequencer has numbered it
    lesson_id: str | None
    lesson_seq: int | None
    session_id: str | None
    type: str
    type_version: int
    payload: dict[str, Any]
    metadata: dict[str, Any]
    ts: datetime

    def domain(self) -> DomainEvent:
        return from_payload(self.type, self.type_version, self.payload)


def _row(r: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(*r)


AppendListener = Callable[[Sequence[StoredEvent]], None]


# Reads on a connection the caller holds (its transaction, its snapshot): the projections
# read pages and the head inside the transaction that moves their checkpoint.


async def head_position_in(conn: AsyncConnection[Any]) -> int:
    row = await (await conn.execute(_Q["head_position"])).fetchone()
    return int(row[0]) if row else 0


async def read_types_page(
    conn: AsyncConnection[Any], after: int, upto: int, types: Iterable[str], limit: int
) -> list[StoredEvent]:
    """Events of `types` in (after, upto], in position order, at most `limit`.

    The caller reads `upto` (the head) first: every position up to the head is visible once
    the head is (the sequencer numbers in contiguous, committed ranges), so a short page
    means nothing of these types is left up to `upto`.
    """
    params = {"after": after, "upto": upto, "types": sorted(types), "limit": limit}
    cur = await conn.execute(_Q["read_types_page"], params)
    return list(map(_row, await cur.fetchall()))


async def model_spend_since(conn: AsyncConnection[Any], since: datetime) -> Decimal:
    row = await (await conn.execute(_Q["model_spend_since"], {"since": since})).fetchone()
    return Decimal(row[0]) if row else Decimal(0)


class EventStore:
    """Appends and reads events through a connection pool; never holds a connection idle."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.pool = pool
        self._listeners: list[AppendListener] = []

    def on_append(self, listener: AppendListener) -> None:
        """Call `listener` with the stored events after each append has committed."""
        self._listeners.append(listener)

    async def append(
        self, lesson_id: str, events: Sequence[NewEvent], expected_seq: int
    ) -> list[StoredEvent]:
        """Append a batch to a lesson at expected_seq+1…, atomically; idempotent by event id.

        Raises WrongExpectedSeq (naming the current seq) if another writer got there first,
        and DuplicateEventId if an id is already stored with different content.
        """
        if not events:
            return []
        params = {
            "lesson_id": lesson_id,
            "expected_seq": expected_seq,
            "ids": [e.id for e in events],
            "session_ids": [e.meta.session_id for e in events],
            "types": [e.type for e in events],
            "versions": [e.type_version for e in events],
            "payloads": [orjson.dumps(e.payload).decode() for e in events],
            "metadata": [orjson.dumps(e.meta.as_json()).decode() for e in events],
        }
        try:
            with translate_errors():
                async with self._connection() as conn:
                    cur = await conn.execute(_Q["append_lesson"], params)
                    stored = sorted(map(_row, await cur.fetchall()), key=_seq)
        except UniqueKeyTaken:
            stored = []
        if stored:
            self._committed(stored)
            return stored
        # A unique key was taken, or expected_seq runs ahead of the log: either this very
        # batch is being retried, or another writer appended first.
        return await self._resolve_conflict(lesson_id, events, expected_seq)

    async def _resolve_conflict(
        self, lesson_id: str, events: Sequence[NewEvent], expected_seq: int
    ) -> list[StoredEvent]:
        ids = [e.id for e in events]
        with translate_errors():
            async with self._connection() as conn:
                found = {
                    s.id: s
                    for s in map(
                        _row,
                        await (await conn.execute(_Q["events_by_id"], {"ids": ids})).fetchall(),
                    )
                }
                head = await (
                    await conn.execute(_Q["lesson_head"], {"lesson_id": lesson_id})
                ).fetchone()
        if found:
            _check_same(events, found, lesson_id)
            if len(found) == len(events):
                return sorted(found.values(), key=_seq)
            raise DuplicateEventId(f"only part of the batch is stored: {sorted(found)}")
        current = int(head[0]) if head else 0
        raise WrongExpectedSeq(lesson_id, expected_seq, current)

    async def append_at_end(
        self, lesson_id: str, events: Sequence[NewEvent], attempts: int = 50
    ) -> list[StoredEvent]:
        """Append a batch after the lesson's current last event, whatever it is.

        Only for events no decision depends on (audio.ready after a clip is stored): every
        other lesson write names its expected_seq. Idempotent by event id.
        """
        if not events:
            return []
        params = {
            "lesson_id": lesson_id,
            "ids": [e.id for e in events],
            "session_ids": [e.meta.session_id for e in events],
            "types": [e.type for e in events],
            "versions": [e.type_version for e in events],
            "payloads": [orjson.dumps(e.payload).decode() for e in events],
            "metadata": [orjson.dumps(e.meta.as_json()).decode() for e in events],
        }
        for _ in range(attempts):
            try:
                with translate_errors():
                    async with self._connection() as conn:
                        cur = await conn.execute(_Q["append_lesson_at_end"], params)
                        stored = sorted(map(_row, await cur.fetchall()), key=_seq)
            except UniqueKeyTaken:
                with translate_errors():
                    async with self._connection() as conn:
                        cur = await conn.execute(_Q["events_by_id"], {"ids": params["ids"]})
                        found = {s.id: s for s in map(_row, await cur.fetchall())}
                if found:  # a retry of a batch that was stored after all
                    _check_same(events, found, lesson_id)
                    return sorted(found.values(), key=_seq)
                continue  # another writer took the same seq in the same instant
            self._committed(stored)
            return stored
        head = await self.lesson_head(lesson_id)
        raise WrongExpectedSeq(lesson_id, head, head)

    async def append_unordered(
        self, events: Sequence[NewEvent], lesson_id: str | None = None
    ) -> list[StoredEvent]:
        """Append session-level events (no lesson_seq); idempotent by event id."""
        if not events:
            return []
        params = {
            "ids": [e.id for e in events],
            "session_ids": [e.meta.session_id for e in events],
            "lesson_ids": [lesson_id for _ in events],
            "types": [e.type for e in events],
            "versions": [e.type_version for e in events],
            "payloads": [orjson.dumps(e.payload).decode() for e in events],
            "metadata": [orjson.dumps(e.meta.as_json()).decode() for e in events],
        }
        with translate_errors():
            async with self._connection() as conn:
                new = list(
                    map(_row, await (await conn.execute(_Q["append_unordered"], params)).fetchall())
                )
                if len(new) < len(events):
                    ids = [e.id for e in events]
                    rows = await (await conn.execute(_Q["events_by_id"], {"ids": ids})).fetchall()
                    found = {s.id: s for s in map(_row, rows)}
                    _check_same(events, found, lesson_id)
                    stored = [found[i] for i in ids]
                else:
                    stored = new
        if new:
            self._committed(new)
        return stored

    async def lesson_head(self, lesson_id: str) -> int:
        """The lesson's current seq (0 for a lesson with no events)."""
        with translate_errors():
            async with self._connection() as conn:
                row = await (
                    await conn.execute(_Q["lesson_head"], {"lesson_id": lesson_id})
                ).fetchone()
        return int(row[0]) if row else 0

    async def read_lesson(
        self, lesson_id: str, after_seq: int = 0, page_size: int = 500
    ) -> AsyncIterator[StoredEvent]:
        """A lesson's events after `after_seq`, in seq order, a page at a time."""
        while True:
            page = await self.read_lesson_page(lesson_id, after_seq, page_size)
            for event in page:
                yield event
            if len(page) < page_size:
                return
            after_seq = page[-1].lesson_seq or after_seq

    async def read_lesson_page(
        self, lesson_id: str, after_seq: int, limit: int
    ) -> list[StoredEvent]:
        """Up to `limit` of a lesson's events after `after_seq`, in seq order."""
        params = {"lesson_id": lesson_id, "after_seq": after_seq, "limit": limit}
        with translate_errors():
            async with self._connection() as conn:
                cur = await conn.execute(_Q["read_lesson"], params)
                return list(map(_row, await cur.fetchall()))

    async def read_all(
        self,
        after_position: int = 0,
        page_size: int = 1000,
        *,
        type: str | None = None,
        lesson_id: str | None = None,
    ) -> AsyncIterator[StoredEvent]:
        """Numbered events after `after_position`, in position order, a page at a time.

        Only events the sequencer has numbered are returned; see the module docstring for
        why a reader of this can never skip one. The next page is fetched while the caller
        works through this one (the database and the decoding overlap); at most two pages
        are held.
        """
        page = await self.read_all_page(after_position, page_size, type=type, lesson_id=lesson_id)
        while True:
            ahead: asyncio.Task[list[StoredEvent]] | None = None
            if len(page) == page_size:
                after_position = page[-1].position or after_position
                ahead = asyncio.create_task(
                    self.read_all_page(after_position, page_size, type=type, lesson_id=lesson_id)
                )
            try:
                for event in page:
                    yield event
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                    ahead.add_done_callback(_retrieve)
                raise
            if ahead is None:
                return
            page = await ahead

    async def read_all_page(
        self,
        after_position: int,
        limit: int,
        *,
        type: str | None = None,
        lesson_id: str | None = None,
    ) -> list[StoredEvent]:
        params = {"after": after_position, "limit": limit, "type": type, "lesson_id": lesson_id}
        with translate_errors():
            async with self._connection() as conn:
                cur = await conn.execute(_Q["read_all"], params)
                return list(map(_row, await cur.fetchall()))

    async def head_position(self) -> int:
        with translate_errors():
            async with self._connection() as conn:
                row = await (await conn.execute(_Q["head_position"])).fetchone()
        return int(row[0]) if row else 0

    async def sequence(self, batch: int = 20_000) -> int:
        """Number every committed, unnumbered event; returns how many were numbered.

        Sends one NOTIFY per pass that numbered anything, from the sequencer's own
        transaction: appends never NOTIFY (a NOTIFY takes a global lock at commit).
        """
        total = 0
        while True:
            params = {"key": SEQUENCER_LOCK_KEY, "limit": batch, "channel": LOG_CHANNEL}
            with translate_errors():
                async with self._connection() as conn:
                    row = await (await conn.execute(_Q["sequence_pending"], params)).fetchone()
            count = int(row[0]) if row else 0
            total += count
            if count < batch:
                return total

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection in autocommit, for statements that stand on their own.

        Every store operation is one self-contained statement (an append is one INSERT, a
        sequencer pass one function call), so autocommit makes each one round trip instead
        of three (BEGIN, statement, COMMIT). The pool's connections go back as they came.
        """
        async with self.pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                yield conn
            finally:
                try:
                    await conn.set_autocommit(False)
                except psycopg.Error:
                    await conn.close()  # mid-operation (cancelled): never hand it out as is

    def _committed(self, stored: Sequence[StoredEvent]) -> None:
        for listener in self._listeners:
            listener(stored)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Consume the outcome of a read-ahead nobody will await (the reader stopped early)."""
    if not task.cancelled():
        task.exception()


def _seq(e: StoredEvent) -> int:
    return e.lesson_seq or 0


def _check_same(
    events: Sequence[NewEvent], found: Mapping[str, StoredEvent], lesson_id: str | None
) -> None:
    """A retried append must carry the same events; anything else reusing an id is an error."""
    for e in events:
        s = found.get(e.id)
        if s is None:
            continue
        same = (
            s.type == e.type
            and s.lesson_id == lesson_id
            and s.payload == orjson.loads(orjson.dumps(e.payload))
        )
        if not same:
            raise DuplicateEventId(f"event id {e.id} is already stored with other content")


class Sequencer:
    """The per-process loop that numbers committed events (see the module docstring).

    Woken directly by this process's appends; polls every `poll_s` for events appended by
    processes that died before numbering them. `on_sequenced()` runs after each pass that
    numbered something, so in-process global readers need no NOTIFY round trip.
    """

    def __init__(
        self,
        store: EventStore,
        poll_s: float = 1.0,
        on_sequenced: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self.on_sequenced = on_sequenced
        self._wake = asyncio.Event()
        store.on_append(lambda _events: self._wake.set())

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the wake-up does, and the loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                numbered = await self.store.sequence()
            except StoreError as e:
                log.warning("sequencer pass failed", error=str(e))
                continue
            if numbered and self.on_sequenced is not None:
                self.on_sequenced()
