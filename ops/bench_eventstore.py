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
import glob
import re
import shutil
import statistics
import subprocess
import tempfile
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
from ops.benchkit import Table, finished, percentile, say
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
        ratio = f"{self.ours / self.theirs:.2f}x" if self.ours is not None and self.theirs else "-"
        return [
            self.metric,
            _num(self.ours, self.unit),
            _num(self.theirs, self.unit),
            ratio,
            self.unit,
            self.note,
        ]


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}" if unit == "ms" else f"{v:,.0f}"


def render(rows: list[Row]) -> str:
    table = Table(
        ["measure", "ours", "eventsourcing", "ours/theirs", "unit", "note"], right=[1, 2, 3]
    )
    for r in rows:
        table.add(*r.cells())
    return table.render()


@dataclass
class Goal:
    """One row of issue 14's table: our figure beside its anchor from the same run."""

    measure: str
    ours: float
    anchor_name: str
    anchor: float | None
    goal: str
    met: bool | None  # None: no anchor measured (pgbench missing)

    def cells(self) -> list[str]:
        ratio = f"{self.ours / self.anchor:.2f}x" if self.anchor else "-"
        met = "-" if self.met is None else ("met" if self.met else "MISSED")
        anchor = (
            f"{self.anchor_name} {self.anchor:,.0f}" if self.anchor else f"{self.anchor_name} -"
        )
        return [self.measure, f"{self.ours:,.0f}", anchor, ratio, self.goal, met]


def render_goals(goals: list[Goal]) -> str:
    table = Table(["issue 14", "ours", "anchor (same run)", "ratio", "goal", ""], right=[1, 2, 3])
    for g in goals:
        table.add(*g.cells())
    return table.render()


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


# -- raw INSERTs: pgbench ----------------------------------------------------------------


def find_pgbench() -> str | None:
    """pgbench from PATH, else from a server installation (Debian keeps it there)."""
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)
    return candidates[0] if candidates else None


RAW_TABLE = """CREATE TABLE IF NOT EXISTS raw_inserts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload JSONB NOT NULL)"""
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


def pgbench_inserts(pgbench: str, url: str, clients: int, seconds: float) -> float:
    """Transactions/s of pgbench running one INSERT of our payload per transaction.

    The floor a one-event append stands on: a durable commit of one row, with none of the
    log's work (indexes, checks, the sequencer) and no Python.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_TABLE)
    # In prepared mode pgbench sends :payload as a parameter, as psycopg does for us.
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write("INSERT INTO raw_inserts (payload) VALUES (:payload);\n")
        script.flush()
        command = [
            pgbench,
            "--no-vacuum",
            "--protocol=prepared",
            f"--define=payload={orjson.dumps(PAYLOAD).decode()}",
            f"--client={clients}",
            f"--jobs={min(clients, 2)}",
            f"--time={max(1, round(seconds))}",
            f"--file={script.name}",
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    match = _TPS.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed: {result.stderr.strip() or result.stdout.strip()}")
    return float(match.group(1))


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
                # Each writer owns its lessons: two writers on one lesson would race for
                # the same seq (with fewer subscribers than writers, some writers share).
                mine = lessons[w::writers] or lessons[w % len(lessons) :][:1]
                i = 0
                interval = writers / rate
                next_at = time.perf_counter()
                while time.perf_counter() < stop:
                    lesson = mine[i % len(mine)]
                    i += 1
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


async def append_pair(
    url: str, writers: int, batch: int, seconds: float, tag: str
) -> tuple[float, float]:
    """Our appends/s, then eventsourcing's, back to back on the same database."""
    async with our_store(url, writers + 2) as store, sequenced(store):
        ours = await our_appends(store, writers, batch, seconds, tag)
    theirs = Theirs(url, writers)
    try:
        their_rate = await asyncio.to_thread(their_appends, theirs, writers, batch, seconds)
    finally:
        theirs.close()
    return ours, their_rate


async def run(url: str, args: argparse.Namespace) -> tuple[list[Row], list[Goal]]:
    rows: list[Row] = []
    goals: list[Goal] = []
    seconds = args.seconds
    rates: dict[tuple[int, int], tuple[float, float]] = {}
    for batch in BATCHES:
        for writers in WRITERS:
            say(f"appends: {writers} writers, batches of {batch} ...")
            ours, their_rate = await append_pair(
                url, writers, batch, seconds, f"a{writers}x{batch}"
            )
            rates[writers, batch] = ours, their_rate
            label = "1 event per txn" if batch == 1 else f"batches of {batch}"
            rows.append(Row(f"appends, {writers} writers, {label}", ours, their_rate))
            say(f"  ours {ours:,.0f}/s, eventsourcing {their_rate:,.0f}/s")
    ours50, theirs50 = rates[8, 50]
    goals.append(
        Goal(
            "appends, batches of 50, 8 writers (events/s)",
            ours50,
            "eventsourcing",
            theirs50,
            ">= 50,000",
            ours50 >= 50_000,
        )
    )

    pgbench = find_pgbench()
    say(
        f"single-event appends, 8 writers: ours, eventsourcing"
        f"{', pgbench' if pgbench else ' (pgbench not installed)'} alternating, "
        f"{args.repeat} rounds ..."
    )
    singles: list[tuple[float, float, float | None]] = []
    for i in range(args.repeat):
        ours, their_rate = await append_pair(url, 8, 1, seconds, f"s{i}")
        raw = (
            await asyncio.to_thread(pgbench_inserts, pgbench, url, 8, seconds) if pgbench else None
        )
        singles.append((ours, their_rate, raw))
        rows.append(
            Row(
                f"appends, 8 writers, 1 event per txn, round {i + 1} of {args.repeat}",
                ours,
                their_rate,
                note=f"pgbench INSERT {raw:,.0f} tps: {ours / raw:.2f}x" if raw else "",
            )
        )
        say(
            f"  round {i + 1}: ours {ours:,.0f}/s, eventsourcing {their_rate:,.0f}/s"
            + (f", pgbench {raw:,.0f} tps" if raw else "")
        )
    worst = min(singles, key=lambda r: r[0] / r[1])
    goals.append(
        Goal(
            f"appends, 1 event per txn, 8 writers: worst of {args.repeat} rounds",
            worst[0],
            "eventsourcing",
            worst[1],
            ">= 3x in every run",
            worst[0] >= 3 * worst[1],
        )
    )
    with_raw = [r for r in singles if r[2]]
    if with_raw:
        low = min(with_raw, key=lambda r: r[0] / (r[2] or 1))
        goals.append(
            Goal(
                f"appends, 1 event per txn, 8 writers: worst of {len(with_raw)} rounds",
                low[0],
                "pgbench INSERT",
                low[2],
                ">= 0.33x",
                3 * low[0] >= (low[2] or 0),
            )
        )
    else:
        goals.append(
            Goal(
                "appends, 1 event per txn, 8 writers",
                statistics.median(r[0] for r in singles),
                "pgbench INSERT",
                None,
                ">= 0.33x",
                None,
            )
        )

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
    goals.insert(
        0,
        Goal(
            f"catch-up reads, pages of {args.page} (events/s)",
            ours,
            "eventsourcing",
            their_rate,
            ">= 2x",
            ours >= 2 * their_rate,
        ),
    )

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
    return rows, goals


def cmd_bench_eventstore(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    with (
        database_url(settings.database_url, settings.home) as server_url,
        scratch_database(server_url, "eventstore") as url,
    ):
        say(f"bench eventstore: scratch database {conninfo_to_dict(url).get('dbname')}")
        rows, goals = asyncio.run(run(url, args))
    print(render(rows))
    print()
    print(render_goals(goals))
    met = sum(1 for g in goals if g.met)
    finished(
        "bench eventstore",
        started,
        f"{len(rows)} measures, {met} of {len(goals)} issue-14 goals met "
        "(scratch database dropped)",
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
