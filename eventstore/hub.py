"""Live subscriptions: one LISTEN connection per process, fanned out in process.

A subscription first catches up from the log, then follows new events; both halves meet
without a duplicate or a gap because every event carries its cursor (`lesson_seq` for a
lesson, `position` for the global log) and a subscription drops anything at or below its own.

How events reach subscribers, cheapest first:

* **Appends in this process** (`EventStore.on_append`): the committed events are in hand, so
  the hub hands them straight to that lesson's subscribers. No query, no NOTIFY.
* **This process's sequencer** (`Sequencer(on_sequenced=hub.wake)`) and **other processes'
  sequencers** (one coalesced NOTIFY per sequencer pass on `LOG_CHANNEL`, payload = head
  position) wake the hub, which tails the global log from its own cursor with one query per
  wake-up and dispatches the page to lesson and log subscribers alike. However many
  subscribers a lesson has, a wake-up costs one read.
* **A slow poll** (`poll_s`) covers a notification lost while the LISTEN connection was
  down; after a reconnect the hub also tails at once.

A lesson stream's catch-up (`Subscription.read_lesson`) is one read shared by every
subscription of that lesson that opens at the same moment, batched with other lessons'
(eventstore/batching.py): a reconnect storm costs a statement per batch, not per reader.

Each subscription has a bounded buffer. The hub never waits for a subscriber: when a buffer
is full it is emptied and the subscription switches to reading the log itself from its own
cursor until it has caught up again (self-healing). A hole in what a subscription received
(seq or position not following its cursor) is filled the same way: a lesson's seq n+1 is
only committed after n, and the sequencer reveals positions as a contiguous prefix, so the
missing events are always readable by the time their successor arrives.

Open a subscription with `async with`: closing it unregisters it from the hub at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict, deque
from collections.abc import Sequence
from types import TracebackType

import psycopg
import structlog
from psycopg import sql

from eventstore.batching import Batcher
from eventstore.errors import StoreError
from eventstore.store import LOG_CHANNEL, EventStore, StoredEvent

log = structlog.get_logger(__name__)

BUFFER_SIZE = 1024  # events a subscription holds before it falls back to reading the log
PAGE_SIZE = 500  # events per log read (catch-up and tail)
LESSONS_PER_READ = 64  # lessons whose whole logs one shared catch-up read returns
# Subscriptions reading the log for themselves at once (behind, or resyncing): however many
# fall behind together, they leave the rest of the pool to everyone else.
SELF_READS = 4


class Subscription:
    """Events of one lesson after a seq, or of the whole log after a position.

    `next_batch()` returns the next events in order (an empty list when `timeout` passes
    with nothing new); iterating yields them one by one, forever.
    """

    def __init__(self, hub: Hub, lesson_id: str | None, after: int, buffer_size: int) -> None:
        self._hub = hub
        self.lesson_id = lesson_id  # None: the global log
        self.cursor = after  # last lesson_seq (or position) handed to the caller
        self._buffer: deque[StoredEvent] = deque()
        self._buffer_size = buffer_size
        self._ready = asyncio.Event()
        self._behind = True  # read the log until caught up (at start, and after overflow)
        self._resyncs = 0  # bumped whenever live deliveries cannot be trusted
        self._registered = False
        self._closed = False
        self._pending: deque[StoredEvent] = deque()  # for __anext__
        self._primed: list[StoredEvent] = []  # a catch-up read by the caller (prime)
        self._resyncs_at_open = 0
        self._high = after  # highest key buffered or handed over
        # A read of the log for this subscription may have begun (see Hub._tail).
        self._reading = False

    # -- called by the hub (synchronous: it never waits for a subscriber) --

    def _deliver(self, events: Sequence[StoredEvent]) -> None:
        if self._closed:
            return
        if events and self._key(events[-1]) <= self._high:
            return  # already delivered (directly, then again by the tail): no wake-up
        if len(self._buffer) + len(events) > self._buffer_size:
            # Fallen behind: drop what is buffered and read the log from our own cursor.
            self._resync()
        else:
            self._buffer.extend(events)
            self._high = max(self._high, self._key(events[-1]))
            self._ready.set()

    def _resync(self) -> None:
        """Read the log from the cursor before trusting live deliveries again."""
        self._buffer.clear()
        self._behind = True
        self._resyncs += 1
        self._ready.set()

    def _key(self, event: StoredEvent) -> int:
        value = event.position if self.lesson_id is None else event.lesson_seq
        return value or 0

    # -- the caller's side --

    def _open(self) -> None:
        if not self._registered and not self._closed:
            self._hub._register(self)
            self._registered = True
            self._resyncs_at_open = self._resyncs

    def open(self) -> None:
        """Start receiving live events now (before a read that `prime` will hand over)."""
        self._open()
        self._reading = True  # the caller reads the log from now on

    async def read_lesson(self) -> list[StoredEvent]:
        """Start receiving live events, then read the lesson's whole log for `prime`.

        The read is shared with every subscription of the lesson that asks at the same
        moment, and begins after this one registered: whatever it misses arrives live.
        The list is shared too: never change it.
        """
        if self.lesson_id is None:
            raise ValueError("read_lesson is for a lesson's subscription")
        self._open()
        return await self._hub._lesson_reads.get(self.lesson_id)

    def prime(self, events: Sequence[StoredEvent], after: int) -> None:
        """Use `events`, read from the log after `open()`, as the catch-up from `after`.

        Whatever was appended after that read reaches the buffer live, so the subscription
        needs no read of its own (unless the hub asked it to resync in the meantime).
        """
        self.cursor = after
        self._primed = [e for e in events if self._key(e) > after]
        if self._primed:
            self._high = max(self._high, self._key(self._primed[-1]))
        if self._registered and self._resyncs == self._resyncs_at_open:
            self._behind = False

    async def next_batch(
        self,
        timeout: float | None = None,  # noqa: ASYNC109  # the agreed API: [] on timeout
    ) -> list[StoredEvent]:
        """The next events after the cursor, in order; [] once `timeout` passes without any."""
        self._open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closed:
            if self._primed:
                # In pages, as a read would be: a caller sends each batch before asking for
                # the next, so a reader that stops reading is noticed at the next send.
                page, self._primed = self._primed[:PAGE_SIZE], self._primed[PAGE_SIZE:]
                fresh, _ = self._take(page, from_log=True)
                self._high = max(self._high, self.cursor)
                if fresh:
                    return fresh
                continue
            if self._behind:
                resyncs = self._resyncs
                page = await self._read_log()
                if len(page) < PAGE_SIZE and resyncs == self._resyncs:
                    # Registered before this read began, so whatever the read missed is
                    # (or will be) in the buffer.
                    self._behind = False
                fresh, _ = self._take(page, from_log=True)
                self._high = max(self._high, self.cursor)
                if fresh:
                    return fresh
                continue
            batch, hole = self._take(self._drain(), from_log=False)
            if hole:  # the missing events are in the log by now: read them from there
                self._behind = True
            if batch:
                return batch
            if hole:
                continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            self._ready.clear()
            if self._buffer or self._behind:
                continue
            try:
                async with asyncio.timeout(remaining):
                    await self._ready.wait()
            except TimeoutError:
                return []
        return []

    def _drain(self) -> list[StoredEvent]:
        events = list(self._buffer)
        self._buffer.clear()
        return events

    def _take(
        self, events: Sequence[StoredEvent], *, from_log: bool
    ) -> tuple[list[StoredEvent], bool]:
        """The events past the cursor, in order, moving the cursor over them.

        Live deliveries must follow on from the cursor; at the first hole the rest is
        dropped and (…, True) returned. The log is authoritative, so what it returns is
        taken as it is.
        """
        out: list[StoredEvent] = []
        for e in sorted(events, key=self._key):
            key = self._key(e)
            if key <= self.cursor:
                continue  # already handed over (a duplicate at a seam)
            if not from_log and key != self.cursor + 1:
                return out, True
            out.append(e)
            self.cursor = key
        return out, False

    async def _read_log(self) -> list[StoredEvent]:
        self._reading = True
        store = self._hub.store
        async with self._hub._self_reads:
            if self.lesson_id is None:
                return await store.read_all_page(self.cursor, PAGE_SIZE)
            return await store.read_lesson_page(self.lesson_id, self.cursor, PAGE_SIZE)

    async def close(self) -> None:
        self._closed = True
        if self._registered:
            self._hub._unregister(self)
            self._registered = False
        self._buffer.clear()
        self._ready.set()

    async def __aenter__(self) -> Subscription:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StoredEvent:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            self._pending.extend(await self.next_batch())
        return self._pending.popleft()


class Hub:
    """A process's fan-out of log events to any number of subscriptions."""

    def __init__(self, store: EventStore, listen_conninfo: str, poll_s: float = 1.0) -> None:
        self.store = store
        self.listen_conninfo = listen_conninfo
        self.poll_s = poll_s
        self.buffer_size = BUFFER_SIZE
        self._lessons: dict[str, set[Subscription]] = defaultdict(set)
        self._log_subs: set[Subscription] = set()
        self._cursor: int | None = None  # the global position the hub has dispatched up to
        self._wake = asyncio.Event()
        self._tailing = asyncio.Lock()
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self._stopping = False
        self.listen_pid: int | None = None  # backend pid of the LISTEN connection
        self._self_reads = asyncio.Semaphore(SELF_READS)
        self._lesson_reads: Batcher[str, list[StoredEvent]] = Batcher(
            self._read_lessons, max_batch=LESSONS_PER_READ, name="catch-up"
        )
        store.on_append(self._on_append)

    def lesson(self, lesson_id: str, after_seq: int = 0) -> Subscription:
        """A lesson's events after `after_seq`: the backlog from the log, then live appends."""
        return Subscription(self, lesson_id, after_seq, self.buffer_size)

    def log(self, after_position: int = 0) -> Subscription:
        """Every numbered event after `after_position`, in position order, then live."""
        return Subscription(self, None, after_position, self.buffer_size)

    def wake(self) -> None:
        """Tail the log soon (the sequencer numbered something, or a NOTIFY arrived)."""
        self._wake.set()

    @property
    def subscriber_count(self) -> int:
        return len(self._log_subs) + sum(len(s) for s in self._lessons.values())

    def _register(self, sub: Subscription) -> None:
        if sub.lesson_id is None:
            self._log_subs.add(sub)
        else:
            self._lessons[sub.lesson_id].add(sub)

    def _unregister(self, sub: Subscription) -> None:
        if sub.lesson_id is None:
            self._log_subs.discard(sub)
            return
        subs = self._lessons.get(sub.lesson_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._lessons[sub.lesson_id]

    async def _read_lessons(self, lesson_ids: Sequence[str]) -> dict[str, list[StoredEvent]]:
        for lesson_id in lesson_ids:
            for sub in self._lessons.get(lesson_id, ()):
                sub._reading = True
        return await self.store.read_lessons(lesson_ids)

    def _all_subscriptions(self) -> list[Subscription]:
        return [*self._log_subs, *(s for subs in self._lessons.values() for s in subs)]

    def _on_append(self, events: Sequence[StoredEvent]) -> None:
        """This process appended: hand the events to that lesson's subscribers directly."""
        if not self._lessons:
            return
        self._dispatch_lessons(events)

    def _dispatch_lessons(self, events: Sequence[StoredEvent]) -> None:
        by_lesson: dict[str, list[StoredEvent]] = defaultdict(list)
        for e in events:
            if (
                e.lesson_id is not None
                and e.lesson_seq is not None
                and e.lesson_id in self._lessons
            ):
                by_lesson[e.lesson_id].append(e)
        for lesson_id, lesson_events in by_lesson.items():
            for sub in tuple(self._lessons.get(lesson_id, ())):
                sub._deliver(lesson_events)

    async def tail(self) -> int:
        """Read the log after the hub's cursor once and dispatch it; returns events read."""
        async with self._tailing:
            return await self._tail()

    async def _tail(self) -> int:
        if self._cursor is None or not (self._lessons or self._log_subs):
            # Nobody to tell (or no cursor yet): skip to where the log ends.
            head = await self.store.head_position()
            if self._cursor is None:
                # Subscriptions that registered while the head was read, and whose catch-up
                # read began before it, might miss what the skip passed over: they re-read
                # the log once from their own cursors (those yet to read will see it all).
                self._cursor = head
                for sub in self._all_subscriptions():
                    if sub._reading:
                        sub._resync()
                return 0
            if not (self._lessons or self._log_subs):
                self._cursor = max(self._cursor, head)
                return 0
            # Subscriptions registered while the head was read: the events up to it are
            # tailed as usual (a second's worth at most) rather than skipped. Sending them
            # all back to the log instead made a reconnect storm read every lesson twice,
            # thousands of reads queueing for the pool at once.
        total = 0
        while True:
            page = await self.store.read_all_page(self._cursor, PAGE_SIZE)
            if not page:
                return total
            total += len(page)
            self._cursor = page[-1].position or self._cursor
            for sub in tuple(self._log_subs):
                sub._deliver(page)
            if self._lessons:
                self._dispatch_lessons(page)
            if len(page) < PAGE_SIZE:
                return total

    async def run(self) -> None:
        """Follow the log until cancelled: LISTEN for other processes, poll as a fallback."""
        listener = asyncio.create_task(self._listen(), name="hub-listen")
        failures = 0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self.tail()
                    failures = 0
                except StoreError as e:
                    failures += 1
                    log.warning("hub tail failed", error=str(e))
                    await asyncio.sleep(_backoff(failures))
        finally:
            await self._lesson_reads.aclose()
            # Never cancel a task parked in psycopg's wait: psycopg answers a cancellation
            # there with a server-side cancel and waits again, and on Python 3.11 the task can
            # stay cancelling forever. The listener checks this flag between short waits.
            self._stopping = True
            done, _ = await asyncio.wait({listener}, timeout=LISTEN_POLL_S * 4)
            if not done:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    async def _listen(self) -> None:
        """One autocommit connection that LISTENs; reconnects with backoff when it drops."""
        failures = 0
        while not self._stopping:
            try:
                conn = await psycopg.AsyncConnection.connect(self.listen_conninfo, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(LOG_CHANNEL)))
                    self.listen_pid = conn.info.backend_pid
                    self.listening.set()
                    failures = 0
                    self.wake()  # anything sequenced while we were not listening
                    while not self._stopping:
                        async for notify in conn.notifies(timeout=LISTEN_POLL_S):
                            if self._newer(notify.payload):
                                self.wake()
            except psycopg.OperationalError as e:
                self.listening.clear()
                failures += 1
                log.warning("hub listen connection lost", error=str(e).strip(), retry=failures)
                await asyncio.sleep(_backoff(failures))
            finally:
                self.listening.clear()

    def _newer(self, payload: str) -> bool:
        try:
            head = int(payload)
        except ValueError:
            return True
        return self._cursor is None or head > self._cursor


# How long the listener waits for a notification before it checks whether to stop.
LISTEN_POLL_S = 0.25


def _backoff(failures: int) -> float:
    """Exponential backoff with jitter: 0.05 s, 0.1 s … capped at 5 s."""
    base: float = min(5.0, 0.05 * 2 ** min(failures - 1, 10))
    return base * (0.5 + random.random() / 2)
