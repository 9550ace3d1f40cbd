"""`omnitutor bench load`: the whole student flow under load, against a server it starts.

    omnitutor bench load [--users 50] [--seconds 30] [--ramp-seconds S]

Starts the service on a scratch database (offline provider at pace 0, rate limits lifted),
then locust (ops/load_students.py, in its own process) ramps to --users simulated students,
each repeating session → plan → stream to the end → ask → adjust with no think time, for
--seconds. Prints per route: requests, answers by kind, requests/s and latency p50/p90/p99/max;
for streams: time to the first byte, time to the end, and SSE delivery lag (each live frame's
arrival minus its event's commit time in the log). ask and adjust answer 404 until their
routes land: those are counted in their own column, not as errors (adjust on a finished lesson
answers 409 by contract, also counted apart). Bounded: locust stops at --seconds and is killed
if it has not exited 60 s later.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from eventstore.database import database_url, open_pool
from eventstore.settings import Settings
from eventstore.store import EventStore
from ops.bench_lessons import server
from ops.benchkit import Table, finished, percentile, say
from ops.scratch import scratch_database

LOCUSTFILE = Path(__file__).with_name("load_students.py")
STREAM_ROUTE = "GET /v1/lesson/:id/stream"
ROUTE_ORDER = [
    "POST /v1/session",
    "POST /v1/plan",
    STREAM_ROUTE,
    STREAM_ROUTE + " (to the end)",
    "POST /v1/lesson/:id/ask",
    "POST /v1/lesson/:id/adjust",
]
LIFTED = "1000000"  # every rate limit, per hour: the load comes from one address


def register(areas: Any) -> None:
    p = areas.add_parser("load", help="the whole student flow under load (locust)")
    p.add_argument("--users", type=int, default=50, help="concurrent simulated students")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the run")
    p.add_argument(
        "--ramp-seconds",
        type=float,
        default=None,
        help="time to reach --users (default: a third of --seconds)",
    )
    p.set_defaults(handler=cmd_bench_load)


@dataclass
class RouteFigures:
    latencies_ms: list[float] = field(default_factory=list)
    by_status: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    errors: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def count_where(self, test: Any) -> int:
        return sum(n for status, n in self.by_status.items() if test(status))


@dataclass
class LoadResult:
    routes: dict[str, RouteFigures]
    first_byte_ms: list[float]
    lag_ms: list[float]
    frames: int
    window_s: float


def read_records(
    path: Path,
) -> tuple[dict[str, RouteFigures], dict[str, tuple[float, float]], list[dict[str, Any]]]:
    """Per route figures; per stream (lesson) when its head arrived and after how many ms;
    the SSE frames."""
    routes: dict[str, RouteFigures] = defaultdict(RouteFigures)
    opens: dict[str, tuple[float, float]] = {}
    frames: list[dict[str, Any]] = []
    if not path.exists():
        return routes, opens, frames
    for line in path.read_text().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            r = orjson.loads(line)
            if "route" in r:
                figures = routes[r["route"]]
                figures.latencies_ms.append(float(r["ms"]))
                figures.by_status[int(r["status"])] += 1
                if r.get("error") and r["status"] not in (404, 409):
                    figures.errors.append(f"{r['status']}: {r['error']}")
            elif "sse_open" in r:
                opens[r["sse_open"]] = (float(r["t"]), float(r["ms"]))
            elif "sse" in r:
                frames.append(r)
    return routes, opens, frames


async def commit_times(url: str, lessons: set[str]) -> dict[tuple[str, int], float]:
    """When each event of these lessons was committed (the log's ts), epoch seconds."""
    times: dict[tuple[str, int], float] = {}
    async with open_pool(url, max_size=2) as pool:
        store = EventStore(pool)
        for lesson_id in lessons:
            async for e in store.read_lesson(lesson_id):
                if e.lesson_seq is not None:
                    times[lesson_id, e.lesson_seq] = e.ts.timestamp()
    return times


def delivery_lags(
    frames: list[dict[str, Any]], opened: dict[str, float], times: dict[tuple[str, int], float]
) -> list[float]:
    """Arrival minus commit, in ms, for frames of events committed after their stream
    opened (earlier events are catch-up: their lag would be the wait for the open)."""
    lags = []
    for f in frames:
        committed = times.get((f["sse"], int(f["seq"])))
        if committed is None or f["event"] not in ("beat_partial", "beat_complete"):
            continue
        if committed >= opened.get(f["sse"], float("inf")):
            lags.append((float(f["t"]) - committed) * 1000)
    return lags


@contextlib.contextmanager
def locust(base: str, users: int, seconds: float, ramp_s: float, records: Path) -> Iterator[None]:
    """locust, headless, for `seconds`; its own output goes to a log beside the records."""
    spawn_rate = max(users / max(ramp_s, 0.1), 0.1)
    log_path = records.with_suffix(".locust.log")
    command = [
        sys.executable,
        "-m",
        "locust",
        "--locustfile",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--users",
        str(users),
        "--spawn-rate",
        f"{spawn_rate:.3f}",
        "--run-time",
        f"{max(1, round(seconds))}s",
        "--stop-timeout",
        "10",
        "--host",
        base,
        "--loglevel",
        "WARNING",
    ]
    env = {**os.environ, "OMNITUTOR_LOAD_RECORDS": str(records)}
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield
            deadline = time.monotonic() + seconds + 60
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    say("bench load: locust did not stop in time; killing it")
                    proc.kill()
                    break
                done = _lines(records)
                say(f"  {done:,} requests and frames recorded")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if proc.returncode not in (0, 1):  # 1: locust saw failures, which we count ourselves
        raise RuntimeError(f"locust exited with {proc.returncode}: {log_path.read_text()[-2000:]}")


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def run_load(url: str, args: argparse.Namespace) -> LoadResult:
    ramp_s = args.ramp_seconds if args.ramp_seconds is not None else args.seconds / 3
    env = {
        "OMNITUTOR_OFFLINE_PACE_MS": "0",
        "OMNITUTOR_POOL_MAX": "10",
        "OMNITUTOR_MAX_GENERATIONS": str(max(100, args.users * 2)),
        "OMNITUTOR_LIMIT_PLAN_ANON_PER_HOUR": LIFTED,
        "OMNITUTOR_LIMIT_PLAN_USER_PER_HOUR": LIFTED,
        "OMNITUTOR_LIMIT_ASK_ANON_PER_HOUR": LIFTED,
        "OMNITUTOR_LIMIT_ASK_USER_PER_HOUR": LIFTED,
    }
    with tempfile.TemporaryDirectory(prefix="omnitutor-load-") as tmp:
        records = Path(tmp) / "records.jsonl"
        with server(url, **env) as srv:
            say(
                f"bench load: {args.users} students against {srv.base}, ramping over "
                f"{ramp_s:.0f}s, {args.seconds:.0f}s in all"
            )
            started = time.time()
            with locust(srv.base, args.users, args.seconds, ramp_s, records):
                pass
            window_s = time.time() - started
        routes, opens, frames = read_records(records)
    opened = {lesson_id: at for lesson_id, (at, _ms) in opens.items()}
    times = asyncio.run(commit_times(url, set(opened)))
    return LoadResult(
        routes=routes,
        first_byte_ms=[ms for _at, ms in opens.values()],
        lag_ms=delivery_lags(frames, opened, times),
        frames=len(frames),
        window_s=window_s,
    )


def render(result: LoadResult) -> str:
    table = Table(
        [
            "route",
            "requests",
            "ok",
            "404",
            "409",
            "errors",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
        ],
        right=range(1, 11),
    )
    names = [n for n in ROUTE_ORDER if n in result.routes]
    names += sorted(set(result.routes) - set(names))
    for name in names:
        r = result.routes[name]
        ms = r.latencies_ms
        table.add(
            name,
            f"{r.count:,}",
            f"{r.count_where(lambda s: s < 400):,}",
            f"{r.by_status.get(404, 0):,}",
            f"{r.by_status.get(409, 0):,}",
            f"{r.count_where(lambda s: s >= 400 and s not in (404, 409)):,}",
            f"{r.count / result.window_s:,.1f}",
            f"{percentile(ms, 0.5):,.1f}",
            f"{percentile(ms, 0.9):,.1f}",
            f"{percentile(ms, 0.99):,.1f}",
            f"{max(ms, default=float('nan')):,.1f}",
        )
    sse = Table(["SSE", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"], right=range(1, 6))
    for label, values in (
        ("stream open: response head", result.first_byte_ms),
        ("delivery lag: commit → frame (live)", result.lag_ms),
    ):
        sse.add(
            label,
            f"{len(values):,}",
            f"{percentile(values, 0.5):,.1f}",
            f"{percentile(values, 0.9):,.1f}",
            f"{percentile(values, 0.99):,.1f}",
            f"{max(values, default=float('nan')):,.1f}",
        )
    return f"{table.render()}\n\n{sse.render()}"


def cmd_bench_load(args: argparse.Namespace, settings: Settings) -> int:
    if args.users < 1 or args.seconds <= 0:
        say("error: --users must be at least 1 and --seconds above 0")
        return 2
    started = time.perf_counter()
    with (
        database_url(settings.database_url, settings.home) as admin,
        scratch_database(admin, "load") as url,
    ):
        result = run_load(url, args)
    print(render(result))
    total = sum(r.count for r in result.routes.values())
    errors = sum(
        r.count_where(lambda s: s >= 400 and s not in (404, 409)) for r in result.routes.values()
    )
    flows = result.routes.get(STREAM_ROUTE + " (to the end)", RouteFigures())
    for name, r in result.routes.items():
        for message in r.errors[:3]:
            say(f"  {name}: {message}")
    finished(
        "bench load",
        started,
        f"{args.users} students, {total:,} requests ({total / result.window_s:,.1f}/s), "
        f"{flows.count_where(lambda s: s < 400):,} lessons streamed to the end, "
        f"{result.frames:,} frames, {errors:,} errors",
    )
    return 0
