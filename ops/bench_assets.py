"""`omnitutor bench assets`: narration latency on the stream, and asset store throughput.

1. **beat_complete → audio_ready** on a lesson's SSE stream: real HTTP against a scratch
   database, the offline tutor, and narration through the official ElevenLabs SDK pointed
   at the local text-to-speech server the tests use (tests/fakes/elevenlabs_server.py), which
   answers after `--tts-delay-ms` (a realistic synthesis time for a paragraph). Every beat
   of `--lessons` lessons with distinct topics (no clip is a cache hit), p50/p99/max.
2. **Store throughput**: `--objects` small objects (1 KB each) written and read back through
   the local store and through the S3 store against moto's server, `--concurrency` at once.

This is a development tool: it uses the test suite's local servers (never a real API).
Progress goes to stderr; the figures to stdout, ending with a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from commands.assetstore import AssetStore, LocalAssetStore, S3AssetStore, object_key
from eventstore.database import database_url
from eventstore.settings import Settings
from ops.benchkit import percentile as pct
from ops.benchkit import say
from ops.scratch import scratch_database


def register(areas: Any) -> None:
    p = areas.add_parser("assets", help="narration latency and asset store throughput")
    p.add_argument("--lessons", type=int, default=8, help="lessons whose beats are timed")
    p.add_argument("--tts-delay-ms", type=int, default=400, help="the TTS server's delay")
    p.add_argument("--pace-ms", type=int, default=10, help="offline tutor's delay per token")
    p.add_argument("--objects", type=int, default=1000, help="objects per store")
    p.add_argument("--concurrency", type=int, default=16)
    p.set_defaults(handler=cmd_bench_assets)


def narration_latency(
    settings: Settings, admin_url: str, lessons: int, delay_ms: int, pace_ms: int
) -> list[float]:
    """Seconds from each beat's beat_complete to its audio_ready, as the client saw them."""
    from tests.fakes.elevenlabs_server import API_KEY, FakeElevenLabs
    from tests.live import serve, serve_app, student_client
    from tests.test_lessons_flow import PLAN_BODY

    fake = FakeElevenLabs()
    fake.delay_s = delay_ms / 1000
    gaps: list[float] = []
    with (
        scratch_database(admin_url, "assets") as db_url,
        tempfile.TemporaryDirectory() as home,
        serve(fake.app) as tts_url,
    ):
        app_settings = Settings(
            home=Path(home),
            dev_http=True,
            log_level="warning",
            offline_pace_ms=pace_ms,
            limit_plan_anon_per_hour=10_000,
            elevenlabs_api_key=API_KEY,
            elevenlabs_base_url=tts_url,
        )
        with serve_app(app_settings, db_url) as base, student_client(base, timeout=120) as c:
            c.post("/v1/session")
            for n in range(lessons):
                body = {**PLAN_BODY, "topic": f"Bench topic {n} {os.getpid()}"}
                answer = c.post("/v1/plan", json=body)
                if answer.status_code != 200:
                    raise RuntimeError(
                        f"POST /v1/plan answered {answer.status_code}: {answer.text}"
                    )
                lesson_id = answer.json()["lesson_id"]
                completed: dict[int, float] = {}
                event = ""
                with c.stream("GET", f"/v1/lesson/{lesson_id}/stream") as r:
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            data = json.loads(line[6:])
                            now = time.perf_counter()
                            if event == "beat_complete" and not data["audio_url"]:
                                completed[data["ord"]] = now
                            elif event == "audio_ready" and data["beat_ord"] in completed:
                                gaps.append(now - completed[data["beat_ord"]])
                            elif event == "lesson_complete":
                                break
                say(f"  lesson {n + 1}/{lessons}: {len(gaps)} clips timed so far")
    return gaps


async def store_throughput(
    store: AssetStore, objects: int, concurrency: int, label: str
) -> tuple[float, float]:
    """(writes per second, reads per second) of `objects` 1 KB objects."""
    payloads = [hashlib.sha256(f"{label}{i}".encode()).digest() * 32 for i in range(objects)]
    keys = [object_key("bench", hashlib.sha256(p).hexdigest(), "json") for p in payloads]
    gate = asyncio.Semaphore(concurrency)

    async def put(key: str, data: bytes) -> None:
        async with gate:
            await store.put(key, data, "application/json")

    async def get(key: str) -> bytes:
        async with gate:
            return await store.get(key)

    started = time.perf_counter()
    await asyncio.gather(*(put(k, p) for k, p in zip(keys, payloads, strict=True)))
    written = time.perf_counter() - started
    started = time.perf_counter()
    read = await asyncio.gather(*(get(k) for k in keys))
    reading = time.perf_counter() - started
    if read != payloads:
        raise RuntimeError(f"{label}: an object read back differs from what was written")
    return objects / written, objects / reading


def cmd_bench_assets(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    with database_url(settings.database_url, settings.home) as admin_url:
        say(f"narration: {args.lessons} lessons, TTS delay {args.tts_delay_ms} ms")
        gaps = narration_latency(settings, admin_url, args.lessons, args.tts_delay_ms, args.pace_ms)
    ms = [g * 1000 for g in gaps]
    print(f"beat_complete → audio_ready ({len(ms)} clips, TTS delay {args.tts_delay_ms} ms):")
    print(f"  p50 {pct(ms, 0.5):.0f} ms   p99 {pct(ms, 0.99):.0f} ms   max {max(ms):.0f} ms")

    from tests.aws import aws_environment, moto_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines

    rates: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as root:
        say(f"local store: {args.objects} objects")
        local = LocalAssetStore(Path(root))
        rates["local"] = asyncio.run(
            store_throughput(local, args.objects, args.concurrency, "local")
        )
    with moto_server() as endpoint:
        os.environ.update(aws_environment(endpoint))
        import boto3

        boto3.client("s3").create_bucket(Bucket="omnitutor-bench")
        say(f"S3 store (moto): {args.objects} objects")
        rates["s3"] = asyncio.run(
            store_throughput(S3AssetStore("omnitutor-bench"), args.objects, args.concurrency, "s3")
        )
    print(f"asset store, {args.objects} objects of 1 KB, {args.concurrency} at a time:")
    for label, (writes, reads) in rates.items():
        print(f"  {label:<11} write {writes:8.0f} obj/s   read {reads:8.0f} obj/s")
    print(
        f"bench assets: audio_ready p50 {pct(ms, 0.5):.0f} ms p99 {pct(ms, 0.99):.0f} ms after "
        f"beat_complete; local {rates['local'][0]:.0f} / S3(moto) {rates['s3'][0]:.0f} writes/s "
        f"in {time.perf_counter() - started:.0f}s"
    )
    return 0
