"""`omnitutor bench projections`: rebuild throughput and live lag of the projections.

    omnitutor bench projections [--events 1000000] [--rate 500] [--lag-seconds 20]

In a scratch database it creates (and drops afterwards) on the configured server, it writes
`--events` generated lesson-log events with COPY (realistic lessons: plan revisions, beats
with partial deltas, audio, interactions, model runs, some session-level runs), then

1. rebuilds all projections together, then each one alone, and prints events/s;
2. runs the live runner (with the in-process sequencer waking it) while lessons are appended
   through the event store at `--rate` events/s for `--lag-seconds`, and prints the lag
   (event timestamp → the commit that applied it) p50 / p99 / max per projection.

Targets (issue 5): a full rebuild of 1,000,000 events under 60 s; lag p99 under 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from eventstore.database import database_url
from eventstore.ids import new_id
from eventstore.settings import Settings
from eventstore.store import EventMeta, EventStore, NewEvent, Sequencer, StoredEvent
from ops.benchkit import ProgressBar, percentile, say
from ops.projections_cli import open_pool
from ops.scratch import scratch_database
from projections.catalog import PROJECTIONS
from projections.rebuild import Rebuild
from projections.runner import ProjectionRunner

USERS = 1000
CONCURRENT_LESSONS = 64  # lessons generating at once: their events interleave in the log


Event = tuple[str, dict[str, Any]]  # (type, payload)


def lesson_events(rng: random.Random, user_id: str, session_id: str) -> Iterator[Event]:
    """One lesson's events, (type, payload), in order (about 70 of them)."""
    beats = 6
    plan = {
        "summary": "30 min · undergrad · problem-driven",
        "beats": [
            {"ord": i, "kind": "concept", "title": f"Beat {i}", "est_min": 4}
            for i in range(1, beats + 1)
        ],
        "after": "damped oscillators",
    }

    def run(purpose: str, beat_ord: int | None, model: str) -> dict[str, Any]:
        return {
            "run_id": new_id(),
            "model": model,
            "purpose": purpose,
            "prompt_tokens": rng.randint(200, 4000),
            "completion_tokens": rng.randint(50, 1500),
            "cost_usd": round(rng.uniform(0.0001, 0.05), 5),
            "latency_ms": rng.randint(150, 9000),
            "status": "ok",
            "trace_id": f"req_{new_id()}",
            "error_code": None,
            "beat_ord": beat_ord,
        }

    yield (
        "lesson.created",
        {
            "session_id": session_id,
            "user_id": user_id,
            "subject": "physics",
            "topic": "Hooke's law & SHM",
            "level": "ug",
            "intent": {"why": "homework", "time": "30 min", "style": "problem-driven"},
            "subject_id": None,
            "topic_id": None,
        },
    )
    yield "model_run.recorded", run("plan", None, "haiku-4-5")
    yield (
        "plan.revised",
        {"revision_num": 1, "plan": plan, "triggered_by": "initial", "feedback_text": None},
    )
    yield (
        "plan.revised",
        {
            "revision_num": 2,
            "plan": plan,
            "triggered_by": "iterate",
            "feedback_text": "more examples",
        },
    )
    yield "plan.locked", {"revision_num": 2, "total_beats": beats}
    for ord_ in range(1, beats + 1):
        beat_id = new_id()
        yield (
            "beat.started",
            {
                "ord": ord_,
                "beat_id": beat_id,
                "kind": "concept",
                "title": f"Beat {ord_}",
                "model": "sonnet-4-6",
            },
        )
        for k in range(5):
            yield (
                "beat.partial",
                {
                    "ord": ord_,
                    "content_delta": "In a system where " * 4,
                    "reset": k == 0 and rng.random() < 0.01,
                },
            )
        yield (
            "beat.completed",
            {
                "ord": ord_,
                "beat_id": beat_id,
                "kind": "concept",
                "content_json": {"blocks": [{"type": "text", "text": "A spring pulls back. " * 8}]},
                "narration_text": "Picture a spring at rest. " * 4,
                "audio_url": None,
            },
        )
        yield "model_run.recorded", run("beat", ord_, "sonnet-4-6")
        yield "model_run.recorded", run("tts", ord_, "elevenlabs")
        yield (
            "audio.ready",
            {"beat_ord": ord_, "audio_url": f"https://cdn.omnitutor.ai/a/{beat_id}.mp3"},
        )
        if ord_ % 3 == 0:
            yield (
                "interaction.recorded",
                {
                    "interaction_id": new_id(),
                    "type": "ask",
                    "payload": {"q": "why?"},
                    "response": {"a": "because"},
                    "beat_ord": ord_,
                },
            )
    if rng.random() < 0.1:
        yield "lesson.abandoned", {"last_beat_ord": beats, "reason": "student"}
    else:
        yield "lesson.completed", {"duration_ms": 600_000, "model_costs": {"sonnet": 0.05}}
    if rng.random() < 0.02:
        yield "lesson.deleted", {"reason": "user"}


def generate(
    total: int, users: Sequence[tuple[str, str]], seed: int = 7
) -> Iterator[tuple[Any, ...]]:
    """Rows for COPY: events of interleaved lessons, numbered 1..total, one ms apart."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(milliseconds=total + 60_000)
    running: list[tuple[str, str, Iterator[Event], list[int]]] = []
    position = 0
    while position < total:
        while len(running) < CONCURRENT_LESSONS:
            user_id, session_id = rng.choice(users)
            running.append((new_id(), session_id, lesson_events(rng, user_id, session_id), [0]))
        if rng.random() < 0.03:  # a session-level moderation run, outside any lesson stream
            position += 1
            payload = {
                "run_id": new_id(), "model": "haiku-4-5", "purpose": "moderation",
                "prompt_tokens": 200, "completion_tokens": 5, "cost_usd": 0.0002,
                "latency_ms": 120, "status": "ok", "trace_id": f"req_{new_id()}",
                "error_code": None, "beat_ord": None,
            }  # fmt: skip
            yield (new_id(), rng.choice(users)[1], None, None, "model_run.recorded", 1,
                   orjson.dumps(payload).decode(), "{}", start + timedelta(milliseconds=position),
                   position)  # fmt: skip
            continue
        i = rng.randrange(len(running))
        lesson_id, session_id, events, seq = running[i]
        nxt = next(events, None)
        if nxt is None:
            running.pop(i)
            continue
        position += 1
        seq[0] += 1
        type_, payload = nxt
        yield (
            new_id(),
            session_id,
            lesson_id,
            seq[0],
            type_,
            1,
            orjson.dumps(payload).decode(),
            "{}",
            start + timedelta(milliseconds=position),
            position,
        )


def load_events(url: str, total: int) -> tuple[list[tuple[str, str]], float]:
    started = time.perf_counter()
    users = [(new_id(), new_id()) for _ in range(USERS)]
    bar = ProgressBar("generate")
    with psycopg.connect(url) as conn:
        with conn.cursor().copy("COPY users (id, anon_id) FROM STDIN") as copy:
            for user_id, _ in users:
                copy.write_row((user_id, new_id()))
        with conn.cursor().copy("COPY sessions (id, user_id) FROM STDIN") as copy:
            for user_id, session_id in users:
                copy.write_row((session_id, user_id))
        columns = (
            "COPY events (id, session_id, lesson_id, lesson_seq, type, type_version, "
            "payload_json, metadata_json, ts, position) FROM STDIN"
        )
        with conn.cursor().copy(columns) as copy:
            for n, row in enumerate(generate(total, users), 1):
                copy.write_row(row)
                if n % 10_000 == 0:
                    bar.update(n, total)
        bar.update(total, total, force=True)
        bar.close()
        conn.commit()
        conn.execute("ANALYZE")
        conn.commit()
    return users, time.perf_counter() - started


async def rebuild(url: str, names: list[str] | None, total: int) -> tuple[float, int]:
    label = "+".join(names) if names else "all"
    bar = ProgressBar(f"rebuild {label}")
    async with open_pool(url, 2) as pool:
        result = await Rebuild(pool, names, restart=True, on_progress=bar.update).run()
    bar.update(result.positions, result.positions, force=True)
    bar.close()
    return result.seconds, result.events


async def lag(
    url: str, users: Sequence[tuple[str, str]], rate: int, seconds: float
) -> dict[str, list[float]]:
    """Append lessons at `rate` events/s through the store; measure event → applied lag."""
    lags: dict[str, list[float]] = {p.name: [] for p in PROJECTIONS}

    def applied(name: str, events: Sequence[StoredEvent], _position: int) -> None:
        now = time.time()
        lags[name].extend(now - e.ts.timestamp() for e in events)

    rng = random.Random(11)
    async with open_pool(url, 8) as pool:
        store = EventStore(pool)
        runner = ProjectionRunner(pool, poll_s=0.5, on_applied=applied)
        sequencer = Sequencer(store, on_sequenced=runner.wake)
        background = [asyncio.create_task(runner.run()), asyncio.create_task(sequencer.run())]
        await runner.catch_up()  # start the clock caught up
        streams: list[dict[str, Any]] = []
        tick = 0.02
        per_tick = max(1, round(rate * tick))
        started = time.monotonic()
        sent = 0
        bar = ProgressBar("lag")
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            while due > 0:
                while len(streams) < 16:
                    user_id, session_id = rng.choice(users)
                    streams.append(
                        {
                            "id": new_id(),
                            "session": session_id,
                            "seq": 0,
                            "events": lesson_events(rng, user_id, session_id),
                        }
                    )
                s = rng.choice(streams)
                batch = []
                for _ in range(min(due, per_tick, 4)):
                    nxt = next(s["events"], None)
                    if nxt is None:
                        streams.remove(s)
                        break
                    batch.append(
                        NewEvent(
                            type=nxt[0], payload=nxt[1], meta=EventMeta(session_id=s["session"])
                        )
                    )
                if batch:
                    await store.append(s["id"], batch, expected_seq=s["seq"])
                    s["seq"] += len(batch)
                    sent += len(batch)
                    due -= len(batch)
            bar.update(int(elapsed), int(seconds))
            await asyncio.sleep(tick)
        bar.close()
        target = await store.head_position() if sent else 0
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:
            await store.sequence()
            steps = await runner.catch_up()
            if all(s.position >= target for s in steps.values()):
                break
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    return lags


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    with (
        database_url(settings.database_url, settings.home) as admin_url,
        scratch_database(admin_url, "projections") as url,
    ):
        say(f"scratch database: generating {args.events:,} events")
        users, gen_s = load_events(url, args.events)
        say(f"generated {args.events:,} events in {gen_s:.1f}s")
        figures: list[tuple[str, float, int]] = []
        seconds, events = asyncio.run(rebuild(url, None, args.events))
        figures.append(("all projections", seconds, events))
        for p in PROJECTIONS:
            s, e = asyncio.run(rebuild(url, [p.name], args.events))
            figures.append((p.name, s, e))
        lags = asyncio.run(lag(url, users, args.rate, args.lag_seconds))
    print(f"rebuild of {args.events:,} log events (target: all projections < 60 s for 1,000,000)")
    print(f"  {'projections':<16} {'seconds':>8} {'log events/s':>13} {'events read':>12}")
    for label, seconds, events in figures:
        print(f"  {label:<16} {seconds:>8.1f} {args.events / seconds:>13,.0f} {events:>12,}")
    print(
        f"lag while appending {args.rate} events/s for {args.lag_seconds:.0f}s "
        "(target: p99 < 200 ms)"
    )
    for label, values in lags.items():
        p50, p99, top = (
            x * 1000 for x in (percentile(values, 0.5), percentile(values, 0.99), max(values))
        )
        print(
            f"  {label:<16} events {len(values):>6,}  p50 {p50:>6.1f} ms  p99 {p99:>6.1f} ms"
            f"  max {top:>6.1f} ms"
        )
    all_s = figures[0][1]
    worst_p99 = max((percentile(v, 0.99) for v in lags.values() if v), default=float("nan"))
    say(
        f"bench projections: full rebuild {args.events:,} events in {all_s:.1f}s "
        f"({args.events / all_s:,.0f}/s); lag p99 {worst_p99 * 1000:.0f} ms at {args.rate}/s"
    )
    return 0


def register(bench: Any) -> None:
    b = bench.add_parser("projections", help="rebuild throughput and live lag of projections")
    b.add_argument("--events", type=int, default=1_000_000)
    b.add_argument("--rate", type=int, default=500, help="events/s appended for the lag test")
    b.add_argument("--lag-seconds", type=float, default=20.0)
    b.set_defaults(handler=cmd_bench)
