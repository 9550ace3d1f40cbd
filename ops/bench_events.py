"""`omnitutor bench events`: browser analytics ingestion, and what it costs lesson appends.

Against a scratch database and a real server process on 127.0.0.1:

1. **Ingestion**: `--clients` concurrent clients (each its own session and lesson) POST
   batches of `--batch` client events to /v1/event for `--seconds`; events accepted per
   second. The mix is the catalog's: lesson events (beat.advance, ask.fired, …) and
   session-level ones (session.start, discovery.search, …), a third with personal fields.
2. **Lesson appends alone**: `--writers` writers in a separate process append lesson events
   one at a time (as a generator does: optimistic, expected seq) for `--seconds`.
3. **Both at once**: the two together; the drop of each against running alone.
4. **Control**: the lesson appends beside one busy loop per core (CPU and nothing else), so
   the drop in 3 can be read against what any load that fills the machine costs them.

Progress goes to stderr; the figures to stdout, ending with a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from eventstore.database import database_url, open_pool
from eventstore.events import BeatPartial, LessonCreated
from eventstore.ids import new_id
from eventstore.settings import Settings
from eventstore.store import EventMeta, EventStore, NewEvent
from ops.bench_lessons import server
from ops.cli_groups import command_group
from ops.scratch import scratch_database

ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = command_group(sub, "bench", "benchmarks; figures on stdout").add_parser(
        "events", help="client analytics ingestion and its effect on lesson appends"
    )
    b.add_argument("--clients", type=int, default=8)
    b.add_argument("--batch", type=int, default=50)
    b.add_argument("--writers", type=int, default=8, help="lesson-event writers")
    b.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    b.set_defaults(handler=cmd_bench_events)


def batch_of(n: int, lesson_id: str, counter: itertools.count[int]) -> list[dict[str, Any]]:
    kinds: list[tuple[str, dict[str, Any], bool]] = [
        ("beat.advance", {"from_ord": 2, "to_ord": 3}, True),
        ("ask.fired", {"beat_ord": 3, "q_chars": 42}, True),
        ("discovery.search", {"query": "why is the sky blue", "source": "search_bar"}, False),
        ("session.start", {"referrer": "", "ua": "bench", "viewport": "390x844"}, False),
        ("visualize.fired", {"beat_ord": 3}, True),
        ("plan.iterate", {"chip": "simpler", "free_text": "less maths please"}, True),
    ]
    out = []
    for _ in range(n):
        type_, payload, lesson = kinds[next(counter) % len(kinds)]
        event: dict[str, Any] = {"type": type_, "ts": int(time.time() * 1000), "payload": payload}
        if lesson:
            event["lesson_id"] = lesson_id
        out.append(event)
    return out


async def _session(base: str) -> tuple[str, str]:
    """A new anonymous session and a lesson of its own: (cookie, lesson id)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.post("/v1/session")).status_code == 201
        r = await client.post(
            "/v1/plan",
            json={"subject": "physics", "topic": "springs", "intent": {"why": "homework"}},
            headers={"Idempotency-Key": new_id()},
        )
        r.raise_for_status()
        return client.cookies["ot_session"], str(r.json()["lesson_id"])


async def ingest(base: str, clients: int, batch: int, seconds: float) -> float:
    """Client events accepted per second by `clients` concurrent clients.

    Each client is one keep-alive HTTP/1.1 connection on a raw socket sending pre-encoded
    bodies, so the figure is the server's, not an HTTP client library's (the two share
    this machine's cores).
    """
    host, port = base.removeprefix("http://").split(":")
    sessions = [await _session(base) for _ in range(clients)]
    accepted = 0
    stop = time.monotonic() + seconds

    async def run(cookie: str, lesson_id: str) -> None:
        nonlocal accepted
        counter = itertools.count()
        bodies = [orjson.dumps({"events": batch_of(batch, lesson_id, counter)}) for _ in range(16)]
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for body in itertools.cycle(bodies):
                if time.monotonic() >= stop:
                    return
                writer.write(
                    b"POST /v1/event HTTP/1.1\r\nHost: %b\r\nCookie: ot_session=%b\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                    % (host.encode(), cookie.encode(), len(body), body)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                answer = orjson.loads(await reader.readexactly(length))
                if status != 202:
                    raise RuntimeError(f"/v1/event answered {status}: {answer}")
                accepted += int(answer["accepted"])
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(run(cookie, lesson) for cookie, lesson in sessions))
    return accepted / (time.monotonic() - started)


def start_appender(db_url: str, writers: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.bench_events", "appender", db_url, str(writers), str(seconds)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def busy_loops() -> list[subprocess.Popen[bytes]]:
    """One spinning process per core: load that takes CPU and touches nothing else."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]


def appender_rate(proc: subprocess.Popen[str]) -> float:
    out, _ = proc.communicate(timeout=600)
    return float(out.strip().splitlines()[-1])


async def _append_lessons(db_url: str, writers: int, seconds: float) -> float:
    """Lesson events appended per second by `writers` writers, one event per append."""
    async with open_pool(db_url, max_size=writers + 1) as pool:
        store = EventStore(pool)
        count = 0
        stop = time.monotonic() + seconds

        async def write() -> None:
            nonlocal count
            lesson_id, user_id, session_id = new_id(), new_id(), new_id()
            async with pool.connection() as conn:  # committed when the block ends
                await conn.execute(
                    "INSERT INTO users (id, anon_id) VALUES (%s, %s)", (user_id, new_id())
                )
                await conn.execute(
                    "INSERT INTO sessions (id, user_id) VALUES (%s, %s)", (session_id, user_id)
                )
            meta = EventMeta(user_id=user_id, session_id=session_id)
            created = LessonCreated(session_id, user_id, "physics", "springs", "hs", {})
            await store.append(lesson_id, [NewEvent.of(created, meta)], 0)
            seq = 1
            while time.monotonic() < stop:
                await store.append(lesson_id, [NewEvent.of(BeatPartial(2, "a delta "), meta)], seq)
                seq += 1
                count += 1

        started = time.monotonic()
        await asyncio.gather(*(write() for _ in range(writers)))
        return count / (time.monotonic() - started)


async def run(args: argparse.Namespace, db_url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    # A pool as large as the clients plus the process's own tasks: requests never queue for one.
    with server(db_url, OMNITUTOR_MAX_GENERATIONS="0", OMNITUTOR_POOL_MAX="20") as srv:
        say(f"ingestion alone: {args.clients} clients, batches of {args.batch}, {args.seconds}s")
        out["ingest_alone_events_s"] = await ingest(
            srv.base, args.clients, args.batch, args.seconds
        )
        say(f"lesson appends alone: {args.writers} writers, {args.seconds}s")
        out["append_alone_events_s"] = appender_rate(
            start_appender(db_url, args.writers, args.seconds)
        )
        say("both at once")
        proc = start_appender(db_url, args.writers, args.seconds)
        out["ingest_with_appends_events_s"] = await ingest(
            srv.base, args.clients, args.batch, args.seconds
        )
        out["append_with_ingest_events_s"] = appender_rate(proc)
    say("control: lesson appends beside one busy loop per core")
    loops = busy_loops()
    try:
        out["append_with_busy_loops_events_s"] = appender_rate(
            start_appender(db_url, args.writers, args.seconds)
        )
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    return out


def cmd_bench_events(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    with (
        database_url(settings.database_url, settings.home) as admin,
        scratch_database(admin, "events") as db,
    ):
        figures = asyncio.run(run(args, db))
    for name, value in figures.items():
        print(f"{name:32s} {value:10.0f}")
    alone = figures["append_alone_events_s"]
    drop = 1 - figures["append_with_ingest_events_s"] / alone
    control = 1 - figures["append_with_busy_loops_events_s"] / alone
    print(
        f"summary: {figures['ingest_alone_events_s']:.0f} client events/s at {args.clients} "
        f"clients (batches of {args.batch}); lesson appends {alone:.0f}/s alone, "
        f"{figures['append_with_ingest_events_s']:.0f}/s during ingestion ({drop:.0%} lower; "
        f"{control:.0%} lower beside {os.cpu_count()} busy loops) "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "appender":
        rate = asyncio.run(_append_lessons(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
        print(f"{rate:.1f}")
    else:
        say("usage: omnitutor bench events")
        sys.exit(2)
