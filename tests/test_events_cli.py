"""`omnitutor events export|tail` and `omnitutor replay`, run as real subprocesses."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore import events as ev
from eventstore.store import EventMeta, EventStore, NewEvent
from tests.logkit import partial

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
META = EventMeta(trace_id="req_cli", session_id="s1", user_id="u1")


def cli_env(db_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "OMNITUTOR_LOG_LEVEL": "warning"}


async def omnitutor(db_url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", *args,
        cwd=ROOT, env=cli_env(db_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def lesson_story(store: EventStore, lesson_id: str) -> None:
    story: list[ev.DomainEvent] = [
        ev.LessonCreated("s1", "u1", "physics", "Hooke's law", "hs", {"why": "homework"}),
        ev.PlanRevised(1, {"summary": "springs", "beats": [{"ord": 1}, {"ord": 2}]}, "initial"),
        ev.PlanLocked(1, 2),
        ev.BeatStarted(1, "b1", "concept", "What a spring does", "haiku-4-5"),
        ev.BeatPartial(1, "A spring pushes back "),
        ev.BeatCompleted(1, "b1", "concept", {"md": "F = -kx"}, "A spring pushes back."),
        ev.ModelRunRecorded(
            "r1", "haiku-4-5", "beat", 120, 340, 0.00123, 850, "ok", "req_cli", beat_ord=1
        ),
        ev.LessonCompleted(61_000, {"haiku-4-5": 0.00123}),
    ]
    await store.append(lesson_id, [NewEvent.of(e, META) for e in story], expected_seq=0)


async def test_export_streams_every_event_in_position_order(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    store = EventStore(pool)
    await lesson_story(store, "L1")
    await store.sequence()
    await lesson_story(store, "L2")  # committed but not numbered: export numbers it first
    await store.append_unordered([NewEvent("session.start", {"ref": "home"}, META)])

    code, out, err = await omnitutor(db_url, "events", "export", "--format", "jsonl")
    assert code == 0, err
    records = [orjson.loads(line) for line in out.splitlines()]
    assert [r["position"] for r in records] == list(range(1, 18))
    assert [r["lesson_seq"] for r in records[:8]] == list(range(1, 9))
    assert records[0]["payload"]["topic"] == "Hooke's law"
    assert records[0]["metadata"] == {"trace_id": "req_cli", "session_id": "s1", "user_id": "u1"}
    assert records[-1]["type"] == "session.start"
    assert "export: 17 events (positions 1..17) as jsonl to stdout" in err

    target = tmp_path / "beats.csv"
    code, out, err = await omnitutor(
        db_url, "events", "export", "--lesson", "L2", "--type", "beat.completed",
        "--format", "csv", "--output", str(target),
    )  # fmt: skip
    assert code == 0, err
    assert out == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [(r["lesson_id"], r["lesson_seq"], r["type"]) for r in rows] == [
        ("L2", "6", "beat.completed")
    ]
    assert orjson.loads(rows[0]["payload"])["content_json"] == {"md": "F = -kx"}
    assert not (tmp_path / "beats.csv.partial").exists()

    code, out, _ = await omnitutor(db_url, "events", "export", "--after", "15", "--format", "jsonl")
    assert [orjson.loads(line)["position"] for line in out.splitlines()] == [16, 17]


async def test_export_rejects_bad_input_with_a_precise_message(db_url: str) -> None:
    code, out, err = await omnitutor(db_url, "events", "export", "--after", "-3", "--format", "csv")
    assert (code, out) == (2, "")
    assert "a position is 0 or more, got -3" in err
    code, _, err = await omnitutor(db_url, "events", "export", "--format", "xml")
    assert code == 2
    assert "invalid choice: 'xml'" in err


async def test_replay_prints_a_readable_timeline(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    await lesson_story(EventStore(pool), "L1")
    code, out, err = await omnitutor(db_url, "replay", "L1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("lesson L1, started ")
    body = lines[2:]
    assert [int(line.split()[0]) for line in body] == list(range(1, 9))
    assert 'physics / "Hooke\'s law" at level hs for u1' in body[0]
    assert "plan v1 (initial): 2 beats" in body[1]
    assert "beat 1 (concept) 'What a spring does' on haiku-4-5" in body[3]
    assert "haiku-4-5 beat ok: 120+340 tokens, $0.00123, 850 ms" in body[6]
    assert "lesson complete in 61.0s, cost $0.0012" in body[7]
    assert "replay: 8 events" in err

    code, out, err = await omnitutor(db_url, "replay", "nope")
    assert (code, out) == (1, "")
    assert "lesson 'nope' has no events" in err


async def test_tail_follows_live_appends_and_stops_cleanly_on_ctrl_c(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    await store.append("L", [partial(0)], expected_seq=0)  # before the tail: not shown
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "events", "tail", "--lesson", "L",
        cwd=ROOT, env=cli_env(db_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        started = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"following lesson L" in started
        await store.append("L", [partial(1), partial(2)], expected_seq=1)
        lines = [await asyncio.wait_for(proc.stdout.readline(), 15) for _ in range(2)]
        assert [b"L#2" in lines[0], b"L#3" in lines[1]] == [True, True]
        assert b"beat.partial" in lines[0]
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert rest == b""
    assert b"tail: stopped after 2 events" in err
