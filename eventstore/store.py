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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import starmap
from pathlib import Path
from typing import Any, Final, LiteralString

import orjson
import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.types.numeric import Int8BinaryLoader
from psycopg_pool import AsyncConnectionPool

from eventstore import personal
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
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Shared single-event INSERTs on their way at once (see _SharedAppends).
SHARED_IN_FLIGHT = 4
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


class StoredEvent:
    """An event as stored: what appends return and reads yield.

    Read-only (the attributes are `Final`, so mypy rejects an assignment). `payload`,
    `metadata` and `ts` arrive as the database's text and are decoded on first access, once:
    a catch-up reader that filters on type or position never pays for JSON and timestamp
    parsing, which were most of a read's cost (docs/eventstore.md, "Catch-up reads"). The
    constructor takes either decoded values or that text.
    """

    __slots__ = (
        "_metadata",
        "_payload",
        "_personal",
        "_ts",
        "id",
        "lesson_id",
        "lesson_seq",
        "position",
        "session_id",
        "type",
        "type_version",
    )

    def __init__(
        self,
        id: str,
        position: int | None,  # None until the sequencer has numbered it
        lesson_id: str | None,
        lesson_seq: int | None,
        session_id: str | None,
        type: str,
        type_version: int,
        payload: dict[str, Any] | str | bytes,
        metadata: dict[str, Any] | str | bytes,
        ts: datetime | str | int,  # int: microseconds since 2000-01-01 UTC (Postgres' epoch)
        personal: str | bytes | None = None,  # vault fields as text, merged into the payload
    ) -> None:
        self.id: Final = id
        self.position: Final = position
        self.lesson_id: Final = lesson_id
        self.lesson_seq: Final = lesson_seq
        self.session_id: Final = session_id
        self.type: Final = type
        self.type_version: Final = type_version
        if personal is not None and isinstance(payload, dict):
            payload = {**payload, **orjson.loads(personal)}
            personal = None
        self._payload = payload
        self._metadata = metadata
        self._ts = ts
        self._personal = personal

    @property
    def payload(self) -> dict[str, Any]:
        value = self._payload
        if isinstance(value, dict):
            return value
        decoded: dict[str, Any] = orjson.loads(value)
        if self._personal is not None:  # its personal fields, read from the vault
            decoded.update(orjson.loads(self._personal))
            self._personal = None
        self._payload = decoded
        return decoded

    @property
    def metadata(self) -> dict[str, Any]:
        value = self._metadata
        if isinstance(value, dict):
            return value
        decoded: dict[str, Any] = orjson.loads(value)
        self._metadata = decoded
        return decoded

    @property
    def ts(self) -> datetime:
        value = self._ts
        if isinstance(value, datetime):
            return value
        if isinstance(value, int):
            decoded = _PG_EPOCH + timedelta(microseconds=value)
        else:
            # Postgres writes timestamptz as ISO 8601 with an hours-only offset ("…+00"),
            # which fromisoformat reads since Python 3.11; in UTC, as a read's ts is, so an
            # appended event and the same event read back show the same time.
            decoded = datetime.fromisoformat(value).astimezone(UTC)
        self._ts = decoded
        return decoded

    def domain(self) -> DomainEvent:
        return from_payload(self.type, self.type_version, self.payload)

    def with_payload(self, payload: dict[str, Any]) -> StoredEvent:
        """The same event with another payload (its personal fields merged back in)."""
        return StoredEvent(
            self.id,
            self.position,
            self.lesson_id,
            self.lesson_seq,
            self.session_id,
            self.type,
            self.type_version,
            payload,
            self._metadata,
            self._ts,
        )

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.position,
            self.lesson_id,
            self.lesson_seq,
            self.session_id,
            self.type,
            self.type_version,
            self.payload,
            self.metadata,
            self.ts,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal by value, like the dataclass it was

    def __repr__(self) -> str:
        names = ("id", "position", "lesson_id", "lesson_seq", "session_id", "type")
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"StoredEvent({shown}, ...)"


async def _fetch_events(
    conn: AsyncConnection[Any],
    query: LiteralString,
    params: Mapping[str, Any],
) -> list[StoredEvent]:
    """Run a query selecting stored-event columns (store.sql, the vault's fields among
    them) and build the events.

    Binary format, with ts loaded as its raw int8 (microseconds since 2000-01-01 UTC): every
    column then goes through one of psycopg's C loaders, and StoredEvent converts ts only if
    it is read.
    """
    cur = conn.cursor(binary=True)
    cur.adapters.register_loader("timestamptz", Int8BinaryLoader)
    await cur.execute(query, params)
    return list(starmap(StoredEvent, await cur.fetchall()))


AppendListener = Callable[[Sequence[StoredEvent]], None]
# Extra work committed atomically with an append (an idempotency key's answer): it runs on
# the append's connection inside its transaction; raising rolls the append back.
InTransaction = Callable[[AsyncConnection[Any]], Awaitable[None]]


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
    # Decoded columns (jsonb, timestamptz): projections touch every payload, so decoding
    # lazily would save them nothing.
    return list(starmap(StoredEvent, await cur.fetchall()))


async def model_spend_since(conn: AsyncConnection[Any], since: datetime) -> Decimal:
    row = await (await conn.execute(_Q["model_spend_since"], {"since": since})).fetchone()
    return Decimal(row[0]) if row else Decimal(0)


class SpendTally:
    """What the model runs recorded since a time cost, kept as a running total.

    `model_spend_since` sums every run of the day on each call, so a check costs more with
    every run the day has seen; a tally reads, after its first call, only the runs numbered
    since its last one and those not numbered yet (model_spend_tally in store.sql). One
    caller at a time (a Batcher of concurrency 1 in commands/spendcap.py).
    """

    def __init__(self) -> None:
        self._since: datetime | None = None
        self._counted = Decimal(0)  # numbered runs since `_since`, up to `_head`
        self._head: int | None = None

    async def spent(self, conn: AsyncConnection[Any], since: datetime) -> Decimal:
        if since != self._since:  # a new day (or the first call): count it from the start
            self._since, self._counted, self._head = since, Decimal(0), None
        params = {"since": since, "after": self._head}
        row = await (await conn.execute(_Q["model_spend_tally"], params)).fetchone()
        numbered, pending, head = (Decimal(0), Decimal(0), 0) if row is None else row
        if self._head is not None and head < self._head:
            # The log went back (a restore, or a failover to a replica behind): count again.
            self._counted, self._head = Decimal(0), None
            return await self.spent(conn, since)
        self._counted += Decimal(numbered)
        self._head = int(head)
        return self._counted + Decimal(pending)


class EventStore:
    """Appends and reads events through a connection pool; never holds a connection idle."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.pool = pool
        self._listeners: list[AppendListener] = []
        self._shared = _SharedAppends(self)

    def on_append(self, listener: AppendListener) -> None:
        """Call `listener` with the stored events after each append has committed."""
        self._listeners.append(listener)

    async def append(
        self,
        lesson_id: str,
        events: Sequence[NewEvent],
        expected_seq: int,
        in_transaction: InTransaction | None = None,
        *,
        beside: Sequence[NewEvent] = (),
    ) -> list[StoredEvent]:
        """Append a batch to a lesson at expected_seq+1…, atomically; idempotent by event id.

        Raises WrongExpectedSeq (naming the current seq) if another writer got there first,
        and DuplicateEventId if an id is already stored with different content.
        `in_transaction`, if given, runs after the INSERT in the same transaction (one more
        round trip), so its writes commit with the events or not at all. `beside` are events
        without a lesson_seq that name the lesson (as append_unordered stores them), stored
        in the same statement if and only if the batch lands: the model runs a decision
        rests on, in its commit. Returns the batch's stored events; listeners get both.
        """
        if not events:
            return []
        every = [*events, *beside]
        # Personal fields go to the vault (eventstore/personal.py), in the append's commit.
        sealed = personal.seal(every, [lesson_id] * len(every), [e.meta.user_id for e in every])
        payloads = [orjson.dumps(p).decode() for p in sealed.payloads]
        metadata = [orjson.dumps(e.meta.as_json()).decode() for e in every]
        shared = None
        if len(events) == 1 and in_transaction is None and not beside:
            shared = await self._shared.append(
                _Waiting(lesson_id, events[0], expected_seq, payloads[0], metadata[0], sealed)
            )
        if shared:
            stored = shared
        else:
            stored = await self._append_alone(
                lesson_id, events, beside, expected_seq, payloads, metadata, sealed, in_transaction
            )
        if stored:
            stored = personal.reveal(stored, sealed.personal)
            self._committed(stored)
            return stored[: len(events)]
        # A unique key was taken, or expected_seq runs ahead of the log: either this very
        # batch is being retried, or another writer appended first.
        return await self._resolve_conflict(lesson_id, events, expected_seq)

    async def _append_alone(
        self,
        lesson_id: str,
        events: Sequence[NewEvent],
        beside: Sequence[NewEvent],
        expected_seq: int,
        payloads: Sequence[str],
        metadata: Sequence[str],
        sealed: personal.Sealed,
        in_transaction: InTransaction | None = None,
    ) -> list[StoredEvent]:
        """The batch in a statement of its own, with its vault rows and the events beside it
        (append_lesson_kept) and `in_transaction` in one commit: the batch's events, then
        those beside that were stored, or [] if a unique key was taken or expected_seq runs
        ahead of the log (then nothing is stored and `in_transaction` does not run)."""
        query, params = _lesson_statement(
            lesson_id, events, beside, expected_seq, payloads, metadata, sealed.rows
        )
        try:
            with translate_errors():
                async with (
                    self._connection() as conn,
                    conn.transaction() if in_transaction else contextlib.nullcontext(),
                ):
                    cur = await conn.execute(query, params)
                    rows = await cur.fetchall()
                    if rows and in_transaction is not None:
                        await in_transaction(conn)
        except UniqueKeyTaken:
            return []
        every = [*events, *beside]
        return _inserted(every, payloads, metadata, [lesson_id] * len(every), rows)

    async def _insert_shared(self, waiting: Sequence[_Waiting]) -> dict[str, StoredEvent]:
        """One INSERT for several callers' single events; the events that landed, by id.
        Raises UniqueKeyTaken if any row's key was taken (then nothing landed)."""
        # The vault rows of the events that land go in the same statement.
        vault = [row for w in waiting for row in w.sealed.rows]
        if len(waiting) == 1:
            w = waiting[0]
            query, params = _lesson_statement(
                w.lesson_id, [w.event], [], w.expected_seq, [w.payload], [w.metadata], vault
            )
        else:
            query = _Q["append_shared"]
            params = {**_shared_params(waiting), "vault": personal.document(vault)}
        with translate_errors():
            async with self._connection() as conn:
                rows = await (await conn.execute(query, params)).fetchall()
        by_id = {w.event.id: w for w in waiting}
        landed = {}
        for id, lesson_seq, ts in rows:
            w = by_id[id]
            e = w.event
            landed[id] = StoredEvent(
                id,
                None,
                w.lesson_id,
                lesson_seq,
                e.meta.session_id,
                e.type,
                e.type_version,
                w.payload,
                w.metadata,
                ts,
            )
        return landed

    async def _resolve_conflict(
        self, lesson_id: str, events: Sequence[NewEvent], expected_seq: int
    ) -> list[StoredEvent]:
        ids = [e.id for e in events]
        with translate_errors():
            async with self._connection() as conn:
                stored = await _fetch_events(conn, _Q["events_by_id"], {"ids": ids})
                head = await (
                    await conn.execute(_Q["lesson_head"], {"lesson_id": lesson_id})
                ).fetchone()
        found = {s.id: s for s in stored}
        if found:
            _check_same(events, found, [lesson_id] * len(events))
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
        lessons = [lesson_id] * len(events)
        sealed = personal.seal(events, lessons, [e.meta.user_id for e in events])
        payloads = [orjson.dumps(p).decode() for p in sealed.payloads]
        metadata = [orjson.dumps(e.meta.as_json()).decode() for e in events]
        params = {
            "lesson_id": lesson_id,
            "ids": [e.id for e in events],
            "session_ids": [e.meta.session_id for e in events],
            "types": [e.type for e in events],
            "versions": [e.type_version for e in events],
            "payloads": payloads,
            "metadata": metadata,
        }
        for _ in range(attempts):
            try:
                with translate_errors():
                    async with self._connection() as conn, personal.kept(conn, sealed):
                        cur = await conn.execute(_Q["append_lesson_at_end"], params)
                        rows = await cur.fetchall()
            except UniqueKeyTaken:
                with translate_errors():
                    async with self._connection() as conn:
                        ids = {"ids": params["ids"]}
                        found_events = await _fetch_events(conn, _Q["events_by_id"], ids)
                found = {s.id: s for s in found_events}
                if found:  # a retry of a batch that was stored after all
                    _check_same(events, found, lessons)
                    return [found[e.id] for e in events if e.id in found]
                continue  # another writer took the same seq in the same instant
            stored = personal.reveal(
                _inserted(events, payloads, metadata, lessons, rows), sealed.personal
            )
            self._committed(stored)
            return stored
        head = await self.lesson_head(lesson_id)
        raise WrongExpectedSeq(lesson_id, head, head)

    async def append_unordered(
        self,
        events: Sequence[NewEvent],
        lesson_id: str | None = None,
        *,
        lesson_ids: Sequence[str | None] | None = None,
    ) -> list[StoredEvent]:
        """Append session-level events (no lesson_seq); idempotent by event id.

        All name `lesson_id`, or each its own (`lesson_ids`, one per event).
        """
        if not events:
            return []
        lessons = list(lesson_ids) if lesson_ids is not None else [lesson_id] * len(events)
        sealed = personal.seal(events, lessons, [e.meta.user_id for e in events])
        payloads = [orjson.dumps(p).decode() for p in sealed.payloads]
        metadata = [orjson.dumps(e.meta.as_json()).decode() for e in events]
        params = {
            "events": _document(events, payloads, metadata, lessons),
            "vault": personal.document(sealed.rows),
        }
        with translate_errors():
            async with self._connection() as conn:
                rows = await (await conn.execute(_Q["append_unordered"], params)).fetchall()
                new = personal.reveal(
                    _inserted(events, payloads, metadata, lessons, rows), sealed.personal
                )
                if new:  # committed, whatever the check of the rest says
                    self._committed(new)
                if len(new) == len(events):
                    return new
                ids = [e.id for e in events]
                stored = await _fetch_events(conn, _Q["events_by_id"], {"ids": ids})
        found = {s.id: s for s in stored}
        _check_same(events, found, lessons)
        return [found[i] for i in ids]

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

    async def read_lesson_after_known(
        self, lesson_id: str, seq: int, event_id: str, page_size: int = 500
    ) -> list[StoredEvent] | None:
        """A lesson's events after `seq`, in seq order, provided the log still holds
        `event_id` at `seq`; None if it does not (the database went back to an earlier point:
        a restore, or a failover to a replica that had not received it).

        For a reader that already knows the lesson up to `seq` (a cached fold): one statement
        when little is new.
        """
        params = {"lesson_id": lesson_id, "after_seq": seq - 1, "limit": page_size + 1}
        with translate_errors():
            async with self._connection() as conn:
                page = await _fetch_events(conn, _Q["read_lesson"], params)
        if not page or page[0].id != event_id:
            return None
        newer = page[1:]
        if len(page) > page_size:
            newer.extend([e async for e in self.read_lesson(lesson_id, _seq(newer[-1]))])
        return newer

    async def read_lesson_page(
        self, lesson_id: str, after_seq: int, limit: int
    ) -> list[StoredEvent]:
        """Up to `limit` of a lesson's events after `after_seq`, in seq order."""
        params = {"lesson_id": lesson_id, "after_seq": after_seq, "limit": limit}
        with translate_errors():
            async with self._connection() as conn:
                return await _fetch_events(conn, _Q["read_lesson"], params)

    async def read_lessons(self, lesson_ids: Sequence[str]) -> dict[str, list[StoredEvent]]:
        """The whole logs of these lessons, in seq order, in one statement (an absent lesson
        has an empty list)."""
        found: dict[str, list[StoredEvent]] = {lesson_id: [] for lesson_id in lesson_ids}
        with translate_errors():
            async with self._connection() as conn:
                events = await _fetch_events(
                    conn, _Q["read_lessons"], {"lesson_ids": list(lesson_ids)}
                )
        for event in events:
            found[event.lesson_id or ""].append(event)
        return found

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
                # Let it send its query now: yielding events to the caller never returns to
                # the event loop, so without this the server would start on the next page
                # only once the caller had finished this one.
                await asyncio.sleep(0)
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
                return await _fetch_events(conn, _Q["read_all"], params)

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


def _append_statement(
    lesson_id: str,
    events: Sequence[NewEvent],
    expected_seq: int,
    payloads: Sequence[str],
    metadata: Sequence[str],
) -> tuple[LiteralString, dict[str, Any]]:
    """The INSERT for a lesson's batch: plain parameters for one event, arrays for more."""
    if len(events) == 1:
        e = events[0]
        return _Q["append_one"], {
            "lesson_id": lesson_id,
            "expected_seq": expected_seq,
            "id": e.id,
            "session_id": e.meta.session_id,
            "type": e.type,
            "type_version": e.type_version,
            "payload": payloads[0],
            "metadata": metadata[0],
        }
    return _Q["append_lesson"], {
        "lesson_id": lesson_id,
        "expected_seq": expected_seq,
        "ids": [e.id for e in events],
        "session_ids": [e.meta.session_id for e in events],
        "types": [e.type for e in events],
        "versions": [e.type_version for e in events],
        "payloads": payloads,
        "metadata": metadata,
    }


def _lesson_statement(
    lesson_id: str,
    events: Sequence[NewEvent],
    beside: Sequence[NewEvent],
    expected_seq: int,
    payloads: Sequence[str],
    metadata: Sequence[str],
    vault: Sequence[personal.VaultRow],
) -> tuple[LiteralString, dict[str, Any]]:
    """The statement for a lesson's batch (payloads and metadata first, then those of the
    events beside it): the plain INSERT, or, when it has vault rows or events beside it,
    append_lesson_kept with the batch, the events beside it and the vault rows of both, each
    as one JSON document."""
    if not vault and not beside:
        return _append_statement(lesson_id, events, expected_seq, payloads, metadata)
    n = len(events)
    return _Q["append_lesson_kept"], {
        "lesson_id": lesson_id,
        "expected_seq": expected_seq,
        "events": _document(events, payloads[:n], metadata[:n]),
        "beside": _document(beside, payloads[n:], metadata[n:]),
        "vault": personal.document(vault),
    }


def _document(
    events: Sequence[NewEvent],
    payloads: Sequence[str],
    metadata: Sequence[str],
    lesson_ids: Sequence[str | None] | None = None,
) -> str:
    """Events as one JSON array, payloads and metadata embedded as they will be stored: the
    client encodes it in C, where text arrays cost a Python-level escape of every element.
    Each names its lesson if `lesson_ids` is given (a lesson's batch names it once)."""
    rows = []
    for i, (e, payload, meta) in enumerate(zip(events, payloads, metadata, strict=True)):
        row = {
            "id": e.id,
            "session_id": e.meta.session_id,
            "type": e.type,
            "type_version": e.type_version,
            "payload": orjson.Fragment(payload),
            "metadata": orjson.Fragment(meta),
        }
        if lesson_ids is not None:
            row["lesson_id"] = lesson_ids[i]
        rows.append(row)
    return orjson.dumps(rows).decode()


def _shared_params(waiting: Sequence[_Waiting]) -> dict[str, Any]:
    return {
        "ids": [w.event.id for w in waiting],
        "session_ids": [w.event.meta.session_id for w in waiting],
        "lesson_ids": [w.lesson_id for w in waiting],
        "expected_seqs": [w.expected_seq for w in waiting],
        "types": [w.event.type for w in waiting],
        "versions": [w.event.type_version for w in waiting],
        "payloads": [w.payload for w in waiting],
        "metadata": [w.metadata for w in waiting],
    }


def _inserted(
    events: Sequence[NewEvent],
    payloads: Sequence[str],
    metadata: Sequence[str],
    lesson_ids: Sequence[str | None],
    rows: Sequence[tuple[Any, ...]],
) -> list[StoredEvent]:
    """The stored events of an INSERT … RETURNING id, lesson_seq, ts, in the batch's order
    (which is lesson_seq order for a lesson's batch).

    The rest of each row is what was sent (payload and metadata as the JSON text that was
    stored), so the database does not send it back.
    """
    returned = {id: (lesson_seq, ts) for id, lesson_seq, ts in rows}
    stored = []
    for e, payload, meta, lesson_id in zip(events, payloads, metadata, lesson_ids, strict=True):
        if e.id in returned:
            lesson_seq, ts = returned[e.id]
            stored.append(
                StoredEvent(
                    e.id,
                    None,
                    lesson_id,
                    lesson_seq,
                    e.meta.session_id,
                    e.type,
                    e.type_version,
                    payload,
                    meta,
                    ts,
                )
            )
    return stored


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Consume the outcome of a read-ahead nobody will await (the reader stopped early)."""
    if not task.cancelled():
        task.exception()


def _seq(e: StoredEvent) -> int:
    return e.lesson_seq or 0


def _check_same(
    events: Sequence[NewEvent],
    found: Mapping[str, StoredEvent],
    lesson_ids: Sequence[str | None],
) -> None:
    """A retried append must carry the same events; anything else reusing an id is an error."""
    for e, lesson_id in zip(events, lesson_ids, strict=True):
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


@dataclass
class _Waiting:
    """A single-event append waiting for the shared INSERT."""

    lesson_id: str
    event: NewEvent
    expected_seq: int
    payload: str
    metadata: str
    sealed: personal.Sealed  # its personal fields, kept in the vault when it lands
    done: asyncio.Future[list[StoredEvent] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _SharedAppends:
    """Single-event appends from concurrent tasks share one INSERT: group commit, one level
    above Postgres' own.

    Up to `in_flight` statements are on their way at once; the single-event appends that
    arrive meanwhile gather, and the next statement carries all of them, so under concurrency
    many callers pay one round trip and one durable commit (alone, an append is one
    statement, as before).
    Each row keeps its own guard (append_shared in store.sql), and nothing about an append
    changes for its caller: it returns once its event is committed. A caller whose row could
    not land in the shared statement (a stale or early expected_seq, or any row's unique key
    taken, which fails the whole statement) is answered None and appends alone, exactly as
    it would have without sharing, so conflicts are resolved one append at a time.

    The statements run in a task of their own: a caller that is cancelled stops waiting, but
    never cancels a statement that carries other callers' events.
    """

    def __init__(self, store: EventStore, in_flight: int = SHARED_IN_FLIGHT) -> None:
        self._store = store
        self._in_flight = in_flight
        self._waiting: list[_Waiting] = []
        self._writers: set[asyncio.Task[None]] = set()

    async def append(self, waiting: _Waiting) -> list[StoredEvent] | None:
        self._waiting.append(waiting)
        if len(self._writers) < self._in_flight:
            writer = asyncio.create_task(self._write_all())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await asyncio.shield(waiting.done)

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._write(batch)
        finally:
            # Leave the set now, not in a done callback: an append arriving before that
            # callback ran would count this writer and might start none.
            current = asyncio.current_task()
            if current is not None:
                self._writers.discard(current)
            if not self._writers:
                # The last writer, cancelled (the loop is closing): nobody will write for
                # those still waiting.
                for w in self._waiting:
                    _settle(w.done, None, asyncio.CancelledError())
                self._waiting = []

    async def _write(self, batch: list[_Waiting]) -> None:
        try:
            landed = await self._store._insert_shared(batch)
        except UniqueKeyTaken:
            landed = {}
        except BaseException as e:
            for w in batch:
                _settle(w.done, None, e)
            if not isinstance(e, Exception):
                raise
            return
        for w in batch:
            stored = landed.get(w.event.id)
            _settle(w.done, [stored] if stored is not None else None)


def _settle(
    future: asyncio.Future[list[StoredEvent] | None],
    result: list[StoredEvent] | None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


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
