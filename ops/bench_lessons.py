"""`omnitutor bench lessons`: how fast lessons stream, and how many streams a process holds.

Runs against a scratch database (created and dropped on the configured server) and real
`omnitutor serve`-equivalent server processes on 127.0.0.1, with a client of raw asyncio
sockets that can hold thousands of SSE connections:

1. **Latency** (one process, offline tutor at pace 0): stream open → first beat_partial,
   and → lesson_complete, over `--lessons` lessons.
2. **Idle capacity**: `--idle` streams held open on one process that generates nothing
   (`OMNITUTOR_MAX_GENERATIONS=0`), spread `--idle-per-lesson` to a lesson; the process's
   RSS before and after, per stream, and the database statements it ran while they idled.
3. **Active delivery**: `--active-lessons` × `--readers` streams on the same process while
   a second process generates the lessons (offline, `--pace-ms` per token): every event's
   delay from its append (the row's `ts`) to its arrival at the client, p50/p99/max; and
   the statements the streaming process ran per wake-up against the number of readers.

Progress goes to stderr; the figures to stdout, ending with a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from eventstore.database import database_url
from eventstore.settings import Settings
from ops.benchkit import percentile, say
from ops.scratch import scratch_database

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def register(areas: Any) -> None:
    p = areas.add_parser("lessons", help="lesson streaming: latency, capacity, delivery")
    p.add_argument("--lessons", type=int, default=20, help="lessons timed end to end")
    p.add_argument("--idle", type=int, default=10_000, help="idle streams to hold")
    p.add_argument("--idle-per-lesson", type=int, default=10)
    p.add_argument("--active-lessons", type=int, default=100)
    p.add_argument("--readers", type=int, default=10, help="readers per active lesson")
    p.add_argument("--pace-ms", type=int, default=40, help="offline pace while active")
    p.set_defaults(handler=cmd_bench_lessons)


# ---- the server processes ------------------------------------------------------------------


def _child_main(port: int) -> None:
    """A server process that counts the statements it sends to the database."""
    import psycopg as pg
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from eventstore.logconfig import configure_logging
    from web.app import create_app

    counts: Counter[str] = Counter()
    original = pg.AsyncConnection.execute

    async def counted(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        counts[_classify(query)] += 1
        return await original(self, query, params, **kw)

    pg.AsyncConnection.execute = counted  # type: ignore[method-assign]  # bench-only probe

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(dict(counts))

    settings = Settings.from_env()
    configure_logging(settings.log_level, "json")
    if settings.database_url is None:
        raise SystemExit("the bench server needs DATABASE_URL")
    app = create_app(settings, settings.database_url)
    app.router.routes.append(Route("/_bench/stats", stats))
    uvicorn.run(app, host=HOST, port=port, access_log=False, log_level="warning", backlog=16384)


def _classify(query: object) -> str:
    text = query if isinstance(query, str) else ""
    if "INSERT INTO events" in text:
        return "append"
    if "FROM events" in text and "lesson_seq > " in text:
        return "lesson_read"
    if "FROM events" in text and "position > " in text:
        return "log_tail"
    return "other"


@dataclass
class Server:
    base: str
    port: int
    proc: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(db_url: str, **env: str) -> Iterator[Server]:
    import httpx

    port = _free_port()
    child_env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "OMNITUTOR_DEV_HTTP": "1",
        "OMNITUTOR_PROVIDER": "offline",
        "OMNITUTOR_LOG_LEVEL": "warning",
        "OMNITUTOR_POOL_MAX": "8",
        # The benchmark makes many plans from one address: lift the per-IP plan limit.
        "OMNITUTOR_LIMIT_PLAN_ANON_PER_HOUR": "1000000",
        **env,
    }
    child_env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.bench_lessons", "child", str(port)], cwd=ROOT, env=child_env
    )
    srv = Server(f"http://{HOST}:{port}", port, proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError("bench server exited at start")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{srv.base}/v1/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("bench server did not start")
            time.sleep(0.1)  # polling a starting process, with a deadline
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the client ----------------------------------------------------------------------------


@dataclass
class Stream:
    """One SSE connection on a raw socket; records (seq, event, arrival) per event."""

    lesson_id: str
    received: list[tuple[int, str, float]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 0
    connected_at: float = 0.0  # when the response head arrived (epoch seconds)
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None

    async def open(self, port: int, cookie: str) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        self.writer = writer
        writer.write(
            (
                f"GET /v1/lesson/{self.lesson_id}/stream HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Cookie: ot_session={cookie}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.connected_at = time.time()
        self.task = asyncio.create_task(self._consume(reader))

    async def _consume(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    return
                chunk = await reader.readexactly(size + 2)
                arrived = time.time()
                for block in chunk[:-2].split(b"\n\n"):
                    seq, name = 0, ""
                    for line in block.split(b"\n"):
                        if line.startswith(b"id: "):
                            seq = int(line.rsplit(b"-", 1)[1])
                        elif line.startswith(b"event: "):
                            name = line[7:].decode()
                    if name:
                        self.received.append((seq, name, arrived))
                    if name in {"lesson_complete", "error"}:
                        self.done.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.done.set()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def open_all(streams: list[Stream], port: int, cookie: str, batch: int = 200) -> None:
    for i in range(0, len(streams), batch):
        await asyncio.gather(*(s.open(port, cookie) for s in streams[i : i + batch]))
        if (i // batch) % 10 == 0:
            say(f"  {min(i + batch, len(streams))}/{len(streams)} streams open")


@contextlib.asynccontextmanager
async def session(base: str) -> AsyncIterator[tuple[Any, str]]:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        r = await client.post("/v1/session")
        r.raise_for_status()
        yield client, r.cookies["ot_session"]


async def make_lessons(client: Any, n: int, topic: str, unique: bool) -> list[str]:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        body = {
            "subject": "physics",
            "topic": f"{topic} {i}" if unique else topic,
            "intent": {"time": "30 min", "level": "first time"},
        }
        async with sem:
            r = await client.post(
                "/v1/plan", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
            )
        r.raise_for_status()
        return str(r.json()["lesson_id"])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


# ---- the phases ----------------------------------------------------------------------------


async def phase_latency(srv: Server, n: int) -> dict[str, float]:
    first_partial: list[float] = []
    complete: list[float] = []
    async with session(srv.base) as (client, cookie):
        lessons = await make_lessons(client, n, "Latency lesson", unique=True)
        for lesson_id in lessons:
            s = Stream(lesson_id)
            started = time.time()
            await s.open(srv.port, cookie)
            await asyncio.wait_for(s.done.wait(), 60)
            await s.close()
            partials = [t for _, name, t in s.received if name == "beat_partial"]
            ends = [t for _, name, t in s.received if name == "lesson_complete"]
            if partials and ends:
                first_partial.append((partials[0] - started) * 1000)
                complete.append((ends[0] - started) * 1000)
    return {
        "first_partial_p50_ms": percentile(first_partial, 0.5),
        "first_partial_max_ms": max(first_partial),
        "complete_p50_ms": percentile(complete, 0.5),
        "complete_max_ms": max(complete),
        "lessons": len(complete),
    }


async def stats(client: Any) -> Counter[str]:
    r = await client.get("/_bench/stats")
    return Counter(r.json())


async def phase_idle(srv: Server, total: int, per_lesson: int) -> dict[str, float]:
    async with session(srv.base) as (client, cookie):
        n_lessons = max(1, total // per_lesson)
        say(f"idle: creating {n_lessons} lessons")
        lessons = await make_lessons(client, n_lessons, "Idle lesson", unique=False)
        # Warm the process up (one stream per lesson opened and closed) before the baseline.
        warm = [Stream(lessons[0]) for _ in range(50)]
        await open_all(warm, srv.port, cookie)
        for s in warm:
            await s.close()
        await asyncio.sleep(1.0)  # let the server finish closing the warm-up connections
        before = srv.rss_mib()
        streams = [Stream(lessons[i % n_lessons]) for i in range(total)]
        t0 = time.perf_counter()
        await open_all(streams, srv.port, cookie)
        open_s = time.perf_counter() - t0
        ok = sum(1 for s in streams if s.status == 200)
        await asyncio.sleep(2.0)  # settle: every stream has sent its first frames
        after = srv.rss_mib()
        c0 = await stats(client)
        hold_s = 5.0
        await asyncio.sleep(hold_s)  # measuring what idle streams cost over time
        c1 = await stats(client)
        alive = sum(1 for s in streams if not s.done.is_set())
        say(f"idle: closing {len(streams)} streams")
        for i in range(0, len(streams), 500):
            await asyncio.gather(*(s.close() for s in streams[i : i + 500]))
    return {
        "streams": total,
        "opened_ok": ok,
        "alive_after_hold": alive,
        "open_s": open_s,
        "rss_before_mib": before,
        "rss_after_mib": after,
        "kib_per_stream": (after - before) * 1024 / max(1, total),
        "statements_per_s_idle": sum((c1 - c0).values()) / hold_s,
    }


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def phase_active(
    streamer: Server, generator: Server, db_url: str, lessons_n: int, readers: int
) -> dict[str, float]:
    async with session(streamer.base) as (client, cookie):
        lessons = await make_lessons(client, lessons_n, "Active lesson", unique=True)
        streams = [Stream(lessons[i % lessons_n]) for i in range(lessons_n * readers)]
        c0 = await stats(client)
        await open_all(streams, streamer.port, cookie)
        all_open_at = time.time()
        c_open = await stats(client)
        say(f"active: {len(streams)} streams open; waiting for {lessons_n} lessons to finish")
        t0 = time.perf_counter()
        cpu0 = (streamer.cpu_s(), generator.cpu_s(), _own_cpu_s())
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in streams)), 600)
        run_s = time.perf_counter() - t0
        cpu1 = (streamer.cpu_s(), generator.cpu_s(), _own_cpu_s())
        c1 = await stats(client)
        for s in streams:
            await s.close()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT lesson_id, lesson_seq, extract(epoch FROM ts)::float8 FROM events"
            " WHERE lesson_id = ANY(%s)",
            (lessons,),
        ).fetchall()
    ts = {(r[0], r[1]): r[2] for r in rows}
    # Live deliveries only: events appended before the reader connected are catch-up.
    live_delays = [
        (ts[(s.lesson_id, seq)], (arrived - ts[(s.lesson_id, seq)]) * 1000)
        for s in streams
        for seq, name, arrived in s.received
        if seq
        and (s.lesson_id, seq) in ts
        and ts[(s.lesson_id, seq)] > s.connected_at
        and name in {"beat_partial", "beat_complete"}
    ]
    delays = [d for _, d in live_delays]
    # Steady state: appended once every stream was open (the opens no longer compete for
    # the streaming process's database pool).
    steady = [d for at, d in live_delays if at > all_open_at]
    live = c1 - c_open
    appended = sum(1 for (lid, _seq) in ts)  # every event of these lessons
    complete = sum(1 for s in streams if any(n == "lesson_complete" for _, n, _t in s.received))
    return {
        "streams": len(streams),
        "completed_streams": complete,
        "run_s": run_s,
        "deliveries": len(delays),
        "delivery_p50_ms": percentile(delays, 0.50),
        "delivery_p99_ms": percentile(delays, 0.99),
        "delivery_max_ms": max(delays) if delays else float("nan"),
        "steady_deliveries": len(steady),
        "steady_delivery_p50_ms": percentile(steady, 0.50),
        "steady_delivery_p99_ms": percentile(steady, 0.99),
        "events_in_log": appended,
        "open_statements": sum((c_open - c0).values()),
        "live_log_tail_reads": live["log_tail"],
        "live_lesson_reads": live["lesson_read"],
        "live_other_statements": live["other"],
        "cpu_streamer_pct": 100 * (cpu1[0] - cpu0[0]) / run_s,
        "cpu_generator_pct": 100 * (cpu1[1] - cpu0[1]) / run_s,
        "cpu_client_pct": 100 * (cpu1[2] - cpu0[2]) / run_s,
    }


async def run(args: argparse.Namespace, db_url: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    say(f"latency: {args.lessons} lessons, offline pace 0, one process")
    with server(db_url, OMNITUTOR_OFFLINE_PACE_MS="0") as solo:
        out["latency"] = await phase_latency(solo, args.lessons)
    say(f"idle: {args.idle} streams on one process")
    with server(db_url, OMNITUTOR_MAX_GENERATIONS="0") as streamer:
        if args.idle:
            out["idle"] = await phase_idle(streamer, args.idle, args.idle_per_lesson)
        n = args.active_lessons * args.readers
        say(f"active: {n} streams, lessons generated by a second process")
        with server(
            db_url,
            OMNITUTOR_OFFLINE_PACE_MS=str(args.pace_ms),
            OMNITUTOR_MAX_GENERATIONS=str(args.active_lessons),
        ) as generator:
            out["active"] = await phase_active(
                streamer, generator, db_url, args.active_lessons, args.readers
            )
    return out


def cmd_bench_lessons(args: argparse.Namespace, settings: Settings) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * args.idle + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # children inherit it
    started = time.perf_counter()
    with (
        database_url(settings.database_url, settings.home) as admin,
        scratch_database(admin, "lessons") as db,
    ):
        figures = asyncio.run(run(args, db))
    for phase, values in figures.items():
        for name, value in values.items():
            shown = f"{value:.1f}" if isinstance(value, float) else str(value)
            print(f"{phase:8s} {name:26s} {shown}")
    lat, act = figures["latency"], figures["active"]
    idle = figures.get("idle", {})
    print(
        f"summary: first partial {lat['first_partial_p50_ms']:.0f} ms, lesson "
        f"{lat['complete_p50_ms']:.0f} ms (p50); {idle.get('streams', 0):.0f} idle streams at "
        f"{idle.get('kib_per_stream', float('nan')):.1f} KiB each "
        f"(RSS {idle.get('rss_after_mib', float('nan')):.0f} MiB); delivery p99 "
        f"{act['steady_delivery_p99_ms']:.1f} ms steady / {act['delivery_p99_ms']:.1f} ms "
        f"incl. ramp-up at {act['streams']:.0f} active streams; "
        f"{act['live_lesson_reads']:.0f} per-lesson reads and {act['live_log_tail_reads']:.0f} "
        f"log tail reads for {act['deliveries']:.0f} deliveries "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        _child_main(int(sys.argv[2]))
    else:
        say("usage: omnitutor bench lessons")
        sys.exit(2)
