"""`omnitutor bench eventstore`: the log's throughput and latency, beside `eventsourcing`.

One run, one table (stdout), progress on stderr:

* appends/s with 1, 8 and 32 concurrent writers, one event per transaction and batches of
  50, for our store (measured until the sequencer has numbered every event, so the figure
  is what catch-up readers can see) and for eventsourcing's PostgresApplicationRecorder on
  the same server and database, with our/their ratio;
* catch-up reads/s over --events stored events (1,000,000 by default), both stores;
* append-to-subscriber latency p50/p99 with 100 live subscribers: lesson subscribers in the
  writing process (direct wake-up), log subscribers (after the sequencer), and lesson
  subscribers of a second hub on its own pool (another process: woken by NOTIFY);
* appends/s at 8 writers with 0 and with 100 subscribers: wake-ups cost the writers nothing.

The benchmark creates its own scratch database and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict

from eventstore.database import database_url, open_pool
from eventstore.hub import Hub, Subscription
from eventstore.settings import Settings
from eventstore.store import EventStore, NewEvent, Sequencer
from ops.benchkit import percentile, say
from ops.cli_groups import command_group
from ops.scratch import scratch_database

WRITERS = (1, 8, 32)
BATCHES = (1, 50)
SUBSCRIBERS = 100
PAYLOAD = {"ord": 3, "content_delta": "The spring constant k measures stiffness: " * 3}
TOPIC = "beat.partial"


@dataclass
class Row:
    metric: str
    ours: float | None
    theirs: float | None = None
    unit: str = "events/s"
    note: str = ""

    def cells(self) -> list[str]:
        def num(v: float | None) -> str:
            if v is None:
                return "-"
            return f"{v:,.1f}" if self.unit == "ms" else f"{v:,.0f}"

        ratio = f"{self.ours / self.theirs:.2f}x" if self.ours is not None and self.theirs else "-"
        return [self.metric, num(self.ours), num(self.theirs), ratio, self.unit, self.note]


def render(rows: list[Row]) -> str:
    header = ["measure", "ours", "eventsourcing", "ours/theirs", "unit", "note"]
    table = [header, *(r.cells() for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    right = {1, 2, 3}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in table[1:])])


# -- the scratch database -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def our_store(url: str, size: int) -> AsyncIterator[EventStore]:
    async with open_pool(url, min_size=size, max_size=size) as pool:
        yield EventStore(pool)


@contextlib.asynccontextmanager
async def sequenced(store: EventStore, hub: Hub | None = None) -> AsyncIterator[None]:
    """This process's sequencer (and hub) running, as in the service."""
    sequencer = Sequencer(store, on_sequenced=hub.wake if hub else None)
    tasks = [asyncio.create_task(sequencer.run())]
    if hub is not None:
        tasks.append(asyncio.create_task(hub.run()))
        await asyncio.wait_for(hub.listening.wait(), 30)
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Theirs:
    """eventsourcing's PostgreSQL application recorder on the same database."""

    def __init__(self, url: str, pool_size: int) -> None:
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

        params = conninfo_to_dict(url)
        self.datastore = PostgresDatastore(
            dbname=str(params["dbname"]),
            host=str(params.get("host", "localhost")),
            port=str(params.get("port", 5432)),
            user=str(params.get("user", "postgres")),
            password=str(params.get("password", "")),
            pool_size=pool_size,
            originator_id_type="text",
        )
        self.recorder = PostgresApplicationRecorder(self.datastore)
        self.recorder.create_table()

    def close(self) -> None:
        self.datastore.close()


def their_event(originator_id: str, version: int) -> Any:
    from eventsourcing.persistence import StoredEvent

    return StoredEvent(
        originator_id=originator_id,
        originator_version=version,
        topic=TOPIC,
        state=orjson.dumps(PAYLOAD),
    )


# -- appends --------------------------------------------------------------------------------


async def our_appends(
    store: EventStore, writers: int, batch: int, seconds: float, lesson_prefix: str
) -> float:
    """Events/s from the first append until the last one is numbered by the sequencer."""
    count = 0
    stop = time.perf_counter() + seconds

    async def write(i: int) -> None:
        nonlocal count
        seq = 0
        lesson = f"{lesson_prefix}-{i}"
        while time.perf_counter() < stop:
            events = [NewEvent(TOPIC, PAYLOAD) for _ in range(batch)]
            await store.append(lesson, events, expected_seq=seq)
            seq += batch
            count += batch

    started = time.perf_counter()
    await asyncio.gather(*(write(i) for i in range(writers)))
    await store.sequence()  # whatever the running sequencer has not numbered yet
    return count / (time.perf_counter() - started)


def their_appends(theirs: Theirs, writers: int, batch: int, seconds: float) -> float:
    count = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def write() -> None:
        nonlocal count
        originator = str(uuid.uuid4())
        version = 0
        while time.perf_counter() < stop:
            events = [their_event(originator, version + i + 1) for i in range(batch)]
            theirs.recorder.insert_events(events)
            version += batch
            with lock:
                count += batch

    threads = [threading.Thread(target=write) for _ in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.perf_counter() - started)


# -- catch-up reads -------------------------------------------------------------------------


def generate(url: str, events: int, step: int = 100_000) -> None:
    """Fill both stores with `events` events server-side, a chunk at a time."""
    payload = orjson.dumps(PAYLOAD).decode()
    with psycopg.connect(url, autocommit=True) as conn:
        top = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
        base = int(top[0]) if top else 0
        for start in range(0, events, step):
            n = min(step, events - start)
            conn.execute(
                """INSERT INTO events (id, lesson_id, lesson_seq, position, type, payload_json)
                   SELECT 'gen-' || (%(off)s + g), 'gen-' || ((%(off)s + g) / 1000),
                          1 + (%(off)s + g) %% 1000, %(base)s + %(off)s + g, %(type)s,
                          %(payload)s::jsonb
                   FROM generate_series(1, %(n)s) AS g""",
                {"off": start, "base": base, "n": n, "type": TOPIC, "payload": payload},
            )
            conn.execute(
                """INSERT INTO stored_events (originator_id, originator_version, topic, state)
                   SELECT 'gen-' || ((%(off)s + g) / 1000), 1 + (%(off)s + g) %% 1000,
                          %(type)s, convert_to(%(payload)s, 'UTF8')
                   FROM generate_series(1, %(n)s) AS g""",
                {"off": start, "n": n, "type": TOPIC, "payload": payload},
            )
            say(f"  generated {start + n:,} of {events:,} events in each store")
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE stored_events")


async def our_catch_up(store: EventStore, page: int) -> tuple[float, int]:
    count = 0
    started = time.perf_counter()
    async for _ in store.read_all(0, page_size=page):
        count += 1
    return count / (time.perf_counter() - started), count


def their_catch_up(theirs: Theirs, page: int) -> tuple[float, int]:
    count = 0
    start = 0
    started = time.perf_counter()
    while True:
        notes = theirs.recorder.select_notifications(start, page, inclusive_of_start=False)
        count += len(notes)
        if len(notes) < page:
            break
        start = notes[-1].id
    return count / (time.perf_counter() - started), count


# -- subscriber latency ---------------------------------------------------------------------


async def latency(
    url: str, subscribers: int, seconds: float, rate: float
) -> dict[str, list[float]]:
    """Append to `subscribers` lessons at `rate` appends/s; time each event to each reader."""
    sent: dict[str, float] = {}
    got: dict[str, list[float]] = {"direct": [], "log": [], "notify": []}
    async with our_store(url, 6) as store, our_store(url, 2) as other:
        hub = Hub(store, url, poll_s=1.0)
        other_hub = Hub(other, url, poll_s=1.0)
        async with sequenced(store, hub), sequenced(other, other_hub):
            heads = {f"lat-{i}": await store.lesson_head(f"lat-{i}") for i in range(subscribers)}
            await store.sequence()
            head = await store.head_position()
            subs: list[tuple[str, Subscription]] = [
                ("direct", hub.lesson(lesson, seq)) for lesson, seq in heads.items()
            ]
            subs += [("notify", other_hub.lesson(lesson, seq)) for lesson, seq in heads.items()]
            subs += [("log", hub.log(head)) for _ in range(4)]

            arrived = asyncio.Event()

            def check() -> None:
                if not writing and all(len(got[k]) >= len(sent) for k in ("direct", "notify")):
                    arrived.set()

            async def read(kind: str, sub: Subscription) -> None:
                async with sub:
                    while True:
                        for e in await sub.next_batch():
                            t = sent.get(e.id)
                            if t is not None:
                                got[kind].append(time.perf_counter() - t)
                        check()

            readers = [asyncio.create_task(read(kind, sub)) for kind, sub in subs]
            stop = time.perf_counter() + seconds
            writing = True
            seqs = dict(heads)
            lessons = list(heads)

            async def write(w: int, writers: int) -> None:
                i = w
                interval = writers / rate
                next_at = time.perf_counter()
                while time.perf_counter() < stop:
                    lesson = lessons[i % len(lessons)]
                    i += writers
                    event = NewEvent(TOPIC, PAYLOAD)
                    sent[event.id] = time.perf_counter()
                    await store.append(lesson, [event], expected_seq=seqs[lesson])
                    seqs[lesson] += 1
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

            await asyncio.gather(*(write(w, 4) for w in range(4)))
            # Let the last events arrive everywhere (bounded), then stop the readers.
            writing = False
            check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 5)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return got


async def appends_while_subscribed(
    url: str, writers: int, seconds: float, subscribers: int
) -> float:
    """One event per append, each writer round-robin over its own lessons; with
    `subscribers` > 0 every lesson has a live subscriber in this same process (the writers'
    worst case: they share its CPU), fed by the hub's direct and sequencer wake-ups."""
    lessons = max(subscribers, writers)
    async with our_store(url, writers + 2) as store:
        hub = Hub(store, url, poll_s=1.0)
        async with sequenced(store, hub):
            prefix = f"wake{subscribers}-{uuid.uuid4().hex[:6]}"
            names = [f"{prefix}-{i}" for i in range(lessons)]
            subs = [hub.lesson(name) for name in names[:subscribers]]

            async def drain(sub: Subscription) -> None:
                async with sub:
                    while True:
                        await sub.next_batch()

            readers = [asyncio.create_task(drain(s)) for s in subs]
            count = 0
            stop = time.perf_counter() + seconds

            async def write(w: int) -> None:
                nonlocal count
                mine = names[w::writers]
                seqs = dict.fromkeys(mine, 0)
                i = 0
                while time.perf_counter() < stop:
                    lesson = mine[i % len(mine)]
                    i += 1
                    await store.append(lesson, [NewEvent(TOPIC, PAYLOAD)], seqs[lesson])
                    seqs[lesson] += 1
                    count += 1

            try:
                started = time.perf_counter()
                await asyncio.gather(*(write(w) for w in range(writers)))
                await store.sequence()
                return count / (time.perf_counter() - started)
            finally:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)


# -- the run --------------------------------------------------------------------------------


async def run(url: str, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    seconds = args.seconds
    for batch in BATCHES:
        for writers in WRITERS:
            say(f"appends: {writers} writers, batches of {batch} ...")
            async with our_store(url, writers + 2) as store, sequenced(store):
                ours = await our_appends(store, writers, batch, seconds, f"a{writers}x{batch}")
            theirs = Theirs(url, writers)
            try:
                their_rate = await asyncio.to_thread(their_appends, theirs, writers, batch, seconds)
            finally:
                theirs.close()
            label = "1 event per txn" if batch == 1 else f"batches of {batch}"
            rows.append(Row(f"appends, {writers} writers, {label}", ours, their_rate))
            say(f"  ours {ours:,.0f}/s, eventsourcing {their_rate:,.0f}/s")

    say(f"catch-up: generating {args.events:,} events ...")
    await asyncio.to_thread(generate, url, args.events)
    async with our_store(url, 2) as store:
        ours, n_ours = await our_catch_up(store, args.page)
    theirs = Theirs(url, 1)
    try:
        their_rate, n_theirs = await asyncio.to_thread(their_catch_up, theirs, args.page)
    finally:
        theirs.close()
    rows.append(
        Row(
            f"catch-up reads ({n_ours:,} / {n_theirs:,} events, pages of {args.page})",
            ours,
            their_rate,
        )
    )
    say(f"  ours {ours:,.0f}/s, eventsourcing {their_rate:,.0f}/s")

    say(f"latency: {args.subscribers} subscribers for {seconds:.0f}s ...")
    got = await latency(url, args.subscribers, max(seconds, 3.0), args.rate)
    for kind, label in (
        ("direct", f"{args.subscribers} lesson subscribers, same process"),
        ("notify", f"{args.subscribers} lesson subscribers, other process (NOTIFY)"),
        ("log", "4 log subscribers (after numbering)"),
    ):
        ms = [v * 1000 for v in got[kind]]
        rows.append(Row(f"latency p50, {label}", percentile(ms, 0.5), unit="ms"))
        rows.append(
            Row(
                f"latency p99, {label}",
                percentile(ms, 0.99),
                unit="ms",
                note=f"{len(ms):,} deliveries",
            )
        )

    say(f"wake-up cost: 8 writers with 0 and with {args.subscribers} subscribers, alternating ...")
    quiet: list[float] = []
    busy: list[float] = []
    for _ in range(args.repeat):
        quiet.append(await appends_while_subscribed(url, 8, seconds, 0))
        busy.append(await appends_while_subscribed(url, 8, seconds, args.subscribers))
    q, b = statistics.median(quiet), statistics.median(busy)
    rows.append(Row("appends, 8 writers, 0 subscribers", q, note=f"median of {args.repeat}"))
    rows.append(
        Row(
            f"appends, 8 writers, {args.subscribers} subscribers (same process)",
            b,
            note=f"{b / q:.2f}x of the 0-subscriber rate",
        )
    )
    return rows


def cmd_bench_eventstore(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    with (
        database_url(settings.database_url, settings.home) as server_url,
        scratch_database(server_url, "eventstore") as url,
    ):
        say(f"bench eventstore: scratch database {conninfo_to_dict(url).get('dbname')}")
        rows = asyncio.run(run(url, args))
    print(render(rows))
    say(
        f"bench eventstore: {len(rows)} measures in {time.perf_counter() - started:.0f}s "
        "(scratch database dropped)"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = command_group(sub, "bench", "benchmarks; figures on stdout").add_parser(
        "eventstore", help="appends, catch-up reads and subscriber latency vs eventsourcing"
    )
    b.add_argument("--events", type=int, default=1_000_000, help="events for catch-up reads")
    b.add_argument("--seconds", type=float, default=3.0, help="duration of each append run")
    b.add_argument("--page", type=int, default=1000, help="catch-up page size (both stores)")
    b.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    b.add_argument("--rate", type=float, default=500.0, help="appends/s in the latency run")
    b.add_argument("--repeat", type=int, default=3, help="alternating runs per comparison")
    b.set_defaults(handler=cmd_bench_eventstore)
