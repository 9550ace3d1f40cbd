"""`omnitutor bench lessons`: how fast lessons stream, and how many streams a process holds.

Runs against a scratch database (created and dropped on the configured server) and real
`omnitutor serve`-equivalent server processes on 127.0.0.1, with a client of raw asyncio
sockets that can hold thousands of SSE connections:

1. **Latency** (one process, offline tutor at pace 0): stream open → first beat_partial,
   and → lesson_complete, over `--lessons` lessons.
2. **Idle capacity**: `--idle` streams held open on one process that generates nothing
   (`OMNITUTOR_MAX_GENERATIONS=0`), spread `--idle-per-lesson` to a lesson; the process's
   RSS before and after, per stream, and the database statements it ran while they idled.
3. **Ask** (one process, offline): `--asks` questions in a row on one lesson; the service's
   overhead around the model calls (round trip minus the model runs the request recorded).
4. **Adjust** (one process, offline at pace 0, a partial per token): `--adjusts` lessons
   adjusted at their first beat_partial; adjust answer → first beat_partial of the new
   revision on the open stream.
5. **Active delivery**: `--active-lessons` × `--readers` streams on the same process while
   a second process generates the lessons (offline, `--pace-ms` per token): every event's
   delay from its append (the row's `ts`) to its arrival at the client, p50/p99/max; and
   the statements the streaming process ran per wake-up against the number of readers.
6. **Reconnect storm**: `--storm` clients, one student (session) each, connect at the same
   moment to existing lessons' streams (every other one resuming with Last-Event-ID), as
   after a deploy: the first data frame's latency from the burst's start, p50/p99/max, and
   opens per second. The same burst against a bare Starlette SSE endpoint in a uvicorn
   process of its own (one data frame at once, then held open), in the same run, is the
   anchor: the ratio p99/p99 is what the service adds to the framework. It runs last.

Progress goes to stderr; the figures to stdout, ending with a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
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
    p.add_argument("--asks", type=int, default=300, help="asks timed for service overhead")
    p.add_argument("--adjusts", type=int, default=20, help="lessons adjusted mid-stream")
    p.add_argument(
        "--storm", type=int, default=3000, help="clients connecting at once (0: skip the storm)"
    )
    p.add_argument("--storm-per-lesson", type=int, default=1, help="storm clients per lesson")
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
    from web.app import create_app, tune_gc

    counts: Counter[str] = Counter()
    original = pg.AsyncCursor.execute  # every statement goes through it, conn.execute's too

    async def counted(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        counts[_classify(query)] += 1
        return await original(self, query, params, **kw)

    pg.AsyncCursor.execute = counted  # type: ignore[method-assign]  # bench-only probe

    gc_started: list[float] = [0.0]
    gc_ms: list[float] = [0.0]

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_ms[0] += (time.perf_counter() - gc_started[0]) * 1000

    gc.callbacks.append(gc_timer)

    async def stats(request: Request) -> JSONResponse:
        streams = request.app.state.deps.hub.subscriber_count
        return JSONResponse({**counts, "streams": streams, "gc_ms": round(gc_ms[0])})

    settings = Settings.from_env()
    configure_logging(settings.log_level, "json")
    if settings.database_url is None:
        raise SystemExit("the bench server needs DATABASE_URL")
    app = create_app(settings, settings.database_url)
    app.router.routes.append(Route("/_bench/stats", stats))
    tune_gc()  # as `omnitutor serve` does
    uvicorn.run(app, host=HOST, port=port, access_log=False, log_level="warning", backlog=16384)


def _bare_main(port: int) -> None:
    """The storm's anchor: a bare Starlette SSE endpoint, one data frame at once, then held
    open until the client goes; served by uvicorn as the service is."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def frames() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        yield b'event: hello\ndata: {"ok": true}\n\n'
        await asyncio.Event().wait()  # held open; Starlette ends it when the client goes

    async def sse(request: Request) -> StreamingResponse:
        return StreamingResponse(frames(), media_type="text/event-stream")

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/sse", sse), Route("/v1/healthz", healthz)])
    uvicorn.run(app, host=HOST, port=port, access_log=False, log_level="warning", backlog=16384)


def _classify(query: object) -> str:
    text = query if isinstance(query, str) else ""
    if "INSERT INTO events" in text:
        return "append"
    if "FROM events" in text and ("lesson_seq > " in text or "lesson_id = ANY" in text):
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
def server(db_url: str, role: str = "child", **env: str) -> Iterator[Server]:
    """A server process (`role` "child": the service; "bare": the storm's anchor)."""
    import httpx

    port = _free_port()
    child_env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "OMNITUTOR_DEV_HTTP": "1",
        "OMNITUTOR_PROVIDER": "offline",
        "OMNITUTOR_LOG_LEVEL": "warning",
        "OMNITUTOR_POOL_MAX": "8",
        # The benchmark makes many plans and streams from one address and holds many
        # streams per session: lift the per-IP plan limit and the stream caps.
        "OMNITUTOR_LIMIT_PLAN_ANON_PER_HOUR": "1000000",
        "OMNITUTOR_SSE_MAX_PER_SESSION": "0",
        "OMNITUTOR_SSE_MAX_PER_CLIENT": "0",
        **env,
    }
    child_env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.bench_lessons", role, str(port)], cwd=ROOT, env=child_env
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
    first_event: asyncio.Event = field(default_factory=asyncio.Event)
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
                        self.first_event.set()
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


async def phase_ask(srv: Server, db_url: str, n: int) -> dict[str, float]:
    """Ask overhead: each ask's round trip minus the model time its trace recorded."""
    round_trips: dict[str, float] = {}
    async with session(srv.base) as (client, _):
        [lesson_id] = await make_lessons(client, 1, "Ask lesson", unique=True)
        for i in range(n):
            started = time.perf_counter()
            r = await client.post(
                f"/v1/lesson/{lesson_id}/ask", json={"question": f"Why does step {i} work?"}
            )
            elapsed = (time.perf_counter() - started) * 1000
            r.raise_for_status()
            round_trips[r.json()["trace_id"]] = elapsed
            if (i + 1) % 100 == 0:
                say(f"  {i + 1}/{n} asks")
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT payload_json->>'trace_id', sum((payload_json->>'latency_ms')::int)"
            " FROM events WHERE type = 'model_run.recorded'"
            " AND payload_json->>'trace_id' = ANY(%s) GROUP BY 1",
            (list(round_trips),),
        ).fetchall()
    model_ms = {trace: float(ms) for trace, ms in rows}
    overhead = [rtt - model_ms.get(trace, 0.0) for trace, rtt in round_trips.items()]
    rtts = list(round_trips.values())
    return {
        "asks": float(len(rtts)),
        "round_trip_p50_ms": percentile(rtts, 0.5),
        "round_trip_p99_ms": percentile(rtts, 0.99),
        "overhead_p50_ms": percentile(overhead, 0.5),
        "overhead_p99_ms": percentile(overhead, 0.99),
    }


async def phase_adjust(srv: Server, n: int) -> dict[str, float]:
    """Adjust at the first beat_partial; time from the answer to the first partial of the
    new revision on the same open stream."""
    import json

    first_regenerated: list[float] = []
    answers: list[float] = []
    too_late = 0
    async with session(srv.base) as (client, _):
        lessons = await make_lessons(client, n, "Adjust lesson", unique=True)
        for lesson_id in lessons:
            answered_at = 0.0
            revision = 0
            async with client.stream("GET", f"/v1/lesson/{lesson_id}/stream") as stream:
                event = ""
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "beat_partial":
                        data = json.loads(line[6:])
                        if not revision:
                            sent = time.perf_counter()
                            r = await client.post(
                                f"/v1/lesson/{lesson_id}/adjust",
                                json={"level": "easier", "current_beat_ord": 1},
                                headers={"Idempotency-Key": str(uuid.uuid4())},
                            )
                            answered_at = time.perf_counter()
                            if r.status_code != 200:
                                too_late += 1
                                break
                            answers.append((answered_at - sent) * 1000)
                            revision = int(r.json()["revision_num"])
                        elif data.get("revision") == revision:
                            first_regenerated.append((time.perf_counter() - answered_at) * 1000)
                            break
                    elif event == "lesson_complete":
                        break
    return {
        "lessons": float(len(first_regenerated)),
        "too_late": float(too_late),
        "adjust_answer_p50_ms": percentile(answers, 0.5),
        "adjust_answer_p99_ms": percentile(answers, 0.99),
        "regenerated_partial_p50_ms": percentile(first_regenerated, 0.5),
        "regenerated_partial_max_ms": max(first_regenerated, default=float("nan")),
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
        "opens_per_s": total / open_s,
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


# ---- the reconnect storm -------------------------------------------------------------------

STORM_DEADLINE_S = 120.0  # a client without its first frame by then counts as failed
STORM_WARM_UP = 100  # clients of a first, unmeasured burst on each server


@dataclass
class StormClient:
    """One client of a burst: connects, asks for a stream, and notes when the first data
    frame arrives (seconds after the burst started); the connection stays open until the
    burst is over, as a reconnected EventSource's would."""

    request: bytes
    first_frame_ms: float = float("nan")
    status: int = 0
    writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, started: float) -> None:
        try:
            async with asyncio.timeout(STORM_DEADLINE_S):
                reader, self.writer = await asyncio.open_connection(HOST, port)
                self.writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
                self.status = int(head.split(b" ", 2)[1])
                tail = b""
                while self.status == 200:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    if b"data:" in tail + chunk:  # the tail: a field split between reads
                        self.first_frame_ms = (time.perf_counter() - started) * 1000
                        return
                    tail = chunk[-8:]
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            return

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


def stream_request(path: str, cookie: str | None = None, last_event_id: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}", "Accept: text/event-stream"]
    if cookie is not None:
        lines.append(f"Cookie: ot_session={cookie}")
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def burst(port: int, requests: list[bytes]) -> dict[str, float]:
    """All `requests` connect at once; first-data-frame latency from the burst's start."""
    clients = [StormClient(r) for r in requests]
    started = time.perf_counter()
    await asyncio.gather(*(c.run(port, started) for c in clients))
    latencies = [c.first_frame_ms for c in clients if c.first_frame_ms == c.first_frame_ms]
    for i in range(0, len(clients), 500):
        await asyncio.gather(*(c.close() for c in clients[i : i + 500]))
    slowest = max(latencies, default=float("nan"))
    return {
        "clients": len(clients),
        "first_frames": len(latencies),
        "first_frame_p50_ms": percentile(latencies, 0.50),
        "first_frame_p99_ms": percentile(latencies, 0.99),
        "first_frame_max_ms": slowest,
        "opens_per_s": len(latencies) / slowest * 1000 if latencies else 0.0,
    }


async def storm_students(srv: Server, n: int, per_lesson: int) -> list[bytes]:
    """The stream requests `n` browsers send on reconnecting: students (a session each) with
    a locked lesson of their own, open in `per_lesson` tabs. Every other request resumes
    with Last-Event-ID (from the event before plan_ready: the lessons generate nothing in
    this process, so any later cursor would wait for a heartbeat)."""
    sem = asyncio.Semaphore(16)
    students = max(1, n // per_lesson)
    ready = 0

    async def student() -> tuple[str, str, int]:
        nonlocal ready
        async with sem, session(srv.base) as (client, cookie):
            [lesson_id] = await make_lessons(client, 1, "Storm lesson", unique=False)
            first = Stream(lesson_id)  # the first open locks the plan
            await first.open(srv.port, cookie)
            async with asyncio.timeout(30):
                await first.first_event.wait()
            await first.close()
        ready += 1
        if ready % 500 == 0:
            say(f"  storm: {ready}/{students} students ready")
        return lesson_id, cookie, first.received[0][0]

    made = await asyncio.gather(*(student() for _ in range(students)))
    requests = []
    for i in range(n):
        lesson_id, cookie, plan_ready_seq = made[i % students]
        resume = f"{lesson_id}-evt-{plan_ready_seq - 1:05d}" if i % 2 else None
        requests.append(stream_request(f"/v1/lesson/{lesson_id}/stream", cookie, resume))
    return requests


async def until_streams_closed(client: Any, deadline_s: float = 60.0) -> None:
    """Wait until the service holds no stream (the last burst's connections are gone)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not (await stats(client))["streams"]:
            return
        await asyncio.sleep(0.2)  # polling a count, with a deadline


async def phase_storm(srv: Server, bare: Server, n: int, per_lesson: int) -> dict[str, float]:
    say(f"storm: {max(1, n // per_lesson)} students with a lesson each, {per_lesson} tab(s) each")
    requests = await storm_students(srv, n, per_lesson)
    bare_requests = [stream_request("/sse")] * n
    async with session(srv.base) as (client, _):
        # Warm both servers up (the service's pool grows to its size) before measuring.
        await burst(bare.port, bare_requests[:STORM_WARM_UP])
        await burst(srv.port, requests[:STORM_WARM_UP])
        await until_streams_closed(client)
        say(f"storm: {n} clients at once on the bare endpoint")
        cpu0 = bare.cpu_s()
        anchor = await burst(bare.port, bare_requests)
        bare_cpu_s = bare.cpu_s() - cpu0  # includes the closes
        await asyncio.sleep(1.0)  # let the bare server finish closing them
        say(f"storm: {n} clients at once on the service")
        c0 = await stats(client)
        cpu0 = srv.cpu_s()
        service = await burst(srv.port, requests)
        service_cpu_s = srv.cpu_s() - cpu0
        c1 = await stats(client)
        await until_streams_closed(client)
    statements = sum(v for k, v in (c1 - c0).items() if k not in {"streams", "gc_ms"})
    return {
        **service,
        "statements_per_open": statements / max(1, n),
        "cpu_ms_per_open": service_cpu_s * 1000 / max(1, n),
        "gc_ms_per_open": (c1["gc_ms"] - c0["gc_ms"]) / max(1, n),
        "bare_first_frames": anchor["first_frames"],
        "bare_first_frame_p50_ms": anchor["first_frame_p50_ms"],
        "bare_first_frame_p99_ms": anchor["first_frame_p99_ms"],
        "bare_first_frame_max_ms": anchor["first_frame_max_ms"],
        "bare_opens_per_s": anchor["opens_per_s"],
        "bare_cpu_ms_per_open": bare_cpu_s * 1000 / max(1, n),
        "p99_ratio": service["first_frame_p99_ms"] / anchor["first_frame_p99_ms"],
    }


async def run(args: argparse.Namespace, db_url: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    if args.lessons:
        say(f"latency: {args.lessons} lessons, offline pace 0, one process")
        with server(db_url, OMNITUTOR_OFFLINE_PACE_MS="0") as solo:
            out["latency"] = await phase_latency(solo, args.lessons)
    if args.asks:
        say(f"ask: {args.asks} asks, offline, one process")
        with server(
            db_url, OMNITUTOR_OFFLINE_PACE_MS="0", OMNITUTOR_LIMIT_ASK_ANON_PER_HOUR="1000000"
        ) as solo:
            out["ask"] = await phase_ask(solo, db_url, args.asks)
    if args.adjusts:
        say(f"adjust: {args.adjusts} lessons adjusted at their first partial")
        with server(
            db_url,
            OMNITUTOR_OFFLINE_PACE_MS="0",
            OMNITUTOR_BEAT_PARTIAL_MS="0",
            OMNITUTOR_LIMIT_ASK_ANON_PER_HOUR="1000000",
        ) as solo:
            out["adjust"] = await phase_adjust(solo, args.adjusts)
    if args.idle or args.active_lessons:
        await phases_streaming(args, db_url, out)
    if args.storm:
        # Last: its thousands of locked lessons would otherwise be generated by the servers
        # of the phases after it, and skew their figures.
        say(f"storm: {args.storm} clients at once, the service against a bare endpoint")
        with (
            server(db_url, OMNITUTOR_MAX_GENERATIONS="0", OMNITUTOR_OFFLINE_PACE_MS="0") as srv,
            server(db_url, "bare") as bare,
        ):
            out["storm"] = await phase_storm(srv, bare, args.storm, args.storm_per_lesson)
    return out


async def phases_streaming(
    args: argparse.Namespace, db_url: str, out: dict[str, dict[str, float]]
) -> None:
    """Idle capacity, then active delivery, on one streaming process."""
    with server(db_url, OMNITUTOR_MAX_GENERATIONS="0") as streamer:
        if args.idle:
            say(f"idle: {args.idle} streams on one process")
            out["idle"] = await phase_idle(streamer, args.idle, args.idle_per_lesson)
        if args.active_lessons:
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


def cmd_bench_lessons(args: argparse.Namespace, settings: Settings) -> int:
    from web.app import tune_gc

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The client holds every stream's socket; the servers (children inherit it) as many.
    want = min(hard, max(soft, 2 * max(args.idle, args.storm) + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < max(args.idle, args.storm) + 256:
        say(f"warning: the open-file limit is {want}; raise `ulimit -Hn` for this many streams")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per set-up request otherwise
    tune_gc()  # the client holds thousands of sockets too: its collector must not stall it
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
    print(f"summary: {summary(figures)} ({time.perf_counter() - started:.0f} s)")
    return 0


def summary(figures: dict[str, dict[str, float]]) -> str:
    """One line: what each phase that ran measured."""
    nan = float("nan")
    parts: list[str] = []
    if storm := figures.get("storm"):
        parts.append(
            f"storm of {storm['clients']:.0f}: first frame p50 "
            f"{storm['first_frame_p50_ms']:.0f} ms / p99 {storm['first_frame_p99_ms']:.0f} ms "
            f"({storm['opens_per_s']:.0f} opens/s) vs bare p99 "
            f"{storm['bare_first_frame_p99_ms']:.0f} ms: {storm['p99_ratio']:.2f}x (target <= 2)"
        )
    if lat := figures.get("latency"):
        parts.append(
            f"first partial {lat['first_partial_p50_ms']:.0f} ms, lesson "
            f"{lat['complete_p50_ms']:.0f} ms (p50)"
        )
    if "ask" in figures or "adjust" in figures:
        parts.append(interaction_summary(figures))
    if idle := figures.get("idle"):
        parts.append(
            f"{idle['streams']:.0f} idle streams at {idle['kib_per_stream']:.1f} KiB each "
            f"(RSS {idle['rss_after_mib']:.0f} MiB), opened at {idle['opens_per_s']:.0f}/s"
        )
    if act := figures.get("active"):
        parts.append(
            f"delivery p99 {act.get('steady_delivery_p99_ms', nan):.1f} ms steady / "
            f"{act['delivery_p99_ms']:.1f} ms incl. ramp-up at {act['streams']:.0f} active "
            f"streams; {act['live_lesson_reads']:.0f} per-lesson reads and "
            f"{act['live_log_tail_reads']:.0f} log tail reads for {act['deliveries']:.0f} "
            "deliveries"
        )
    return "; ".join(parts) or "nothing measured"


def interaction_summary(figures: dict[str, dict[str, float]]) -> str:
    ask, adjust = figures.get("ask", {}), figures.get("adjust", {})
    nan = float("nan")
    return (
        f"interactions: ask overhead p50 {ask.get('overhead_p50_ms', nan):.1f} ms / p99 "
        f"{ask.get('overhead_p99_ms', nan):.1f} ms (target p99 < 20); adjust → first "
        f"regenerated partial p50 {adjust.get('regenerated_partial_p50_ms', nan):.1f} ms / max "
        f"{adjust.get('regenerated_partial_max_ms', nan):.1f} ms (target < 200)"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        _child_main(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "bare":
        _bare_main(int(sys.argv[2]))
    else:
        say("usage: omnitutor bench lessons")
        sys.exit(2)
