"""Two `omnitutor serve` processes on one database; the lesson's owner is killed with SIGKILL.

The other process takes the lesson over when the lease lapses, resumes at the first beat
not completed (restarting the interrupted one with a reset partial), and the client that
reconnects to it with Last-Event-ID sees the lesson through: every beat exactly once.
"""

from __future__ import annotations

import signal
import time
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from subprocess import Popen

import psycopg
import pytest

from tests import live
from tests.conditions import wait_for
from tests.live import student_client
from tests.sse import Sse, read_stream
from tests.test_lessons_api import body_with, durable, named

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def serve_process(db_url: str, log_path: Path) -> AbstractContextManager[tuple[str, Popen[bytes]]]:
    """`omnitutor serve` on this test's database, generating slowly enough to be killed."""
    env = {
        "DATABASE_URL": db_url,
        "OMNITUTOR_DEV_HTTP": "1",
        "OMNITUTOR_PROVIDER": "offline",
        "OMNITUTOR_OFFLINE_PACE_MS": "15",
        "OMNITUTOR_BEAT_PARTIAL_MS": "200",
        "OMNITUTOR_SSE_HEARTBEAT_S": "1",
        "OMNITUTOR_POOL_MAX": "4",
        "OMNITUTOR_LOG_LEVEL": "warning",
    }
    return live.serve_process(env, log_path)


def test_owner_killed_mid_lesson_other_process_finishes_it(db_url: str, tmp_path: Path) -> None:
    with ExitStack() as stack:
        a_url, a_proc = stack.enter_context(serve_process(db_url, tmp_path / "a.log"))
        b_url, b_proc = stack.enter_context(serve_process(db_url, tmp_path / "b.log"))
        procs = {a_proc.pid: (a_url, a_proc), b_proc.pid: (b_url, b_proc)}
        a = stack.enter_context(student_client(a_url, timeout=30))
        assert a.post("/v1/session").status_code == 201
        lesson_id = a.post("/v1/plan", json=body_with("topic", "Standing waves")).json()[
            "lesson_id"
        ]
        # Read until beat 2 is complete and beat 3 is under way: well inside the lesson.
        first = read_stream(
            a,
            lesson_id,
            stop=lambda evs: any(e.event == "beat_partial" and e.data["ord"] == 3 for e in evs),
        )
        received: list[Sse] = named(first.events)
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT owner FROM lesson_generation WHERE lesson_id = %s", (lesson_id,)
            ).fetchone()
        assert row is not None
        owner_pid = int(row[0].split(":")[1])
        survivor_url, _ = next(v for pid, v in procs.items() if pid != owner_pid)
        _, victim = procs[owner_pid]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        killed_at = time.monotonic()

        def taken_over() -> bool:
            with psycopg.connect(db_url) as conn:
                got = conn.execute(
                    "SELECT owner, claims FROM lesson_generation WHERE lesson_id = %s",
                    (lesson_id,),
                ).fetchone()
            return bool(got and got[1] >= 2 and got[0] and f":{owner_pid}:" not in got[0])

        wait_for(taken_over, deadline_s=10, interval_s=0.1)
        takeover_s = time.monotonic() - killed_at
        assert takeover_s < 10

        # The client reconnects to the survivor with the same session cookie.
        b = stack.enter_context(student_client(survivor_url, timeout=30, cookies=a.cookies))
        rest = read_stream(b, lesson_id, received[-1].id, deadline_s=90)
        received += named(rest.events)
        assert received[-1].event == "lesson_complete"
        seqs = [int(e.id.rsplit("-", 1)[1]) for e in received if e.id]
        assert seqs == sorted(set(seqs))
        assert durable(received) == durable(named(read_stream(b, lesson_id).events))

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT type, payload_json FROM events WHERE lesson_id = %s ORDER BY lesson_seq",
            (lesson_id,),
        ).fetchall()
    completed = [p["ord"] for t, p in rows if t == "beat.completed"]
    total = next(p["total_beats"] for t, p in rows if t == "plan.locked")
    assert completed == list(range(1, total + 1))  # every beat exactly once, in order
    assert any(t == "beat.partial" and p["reset"] for t, p in rows)  # beat 3 restarted
    assert [t for t, _ in rows].count("lesson.completed") == 1
