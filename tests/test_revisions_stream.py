"""Plans that change while they stream: adjusts against live and reconnecting SSE readers.

A reader assembles the lesson from the stream the way the client does: `plan_ready` sets
the plan and drops the beats it names as superseded, `beat_partial` builds a beat's text
(`reset` starts it over), `beat_complete` sets a beat. Whatever the reader's connection did,
the lesson it ends with must be the one a full read of the log shows (GET /v1/lesson).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conditions import wait_for
from tests.conftest import make_settings
from tests.live import serve_app, student_client
from tests.sse import Sse, read_stream
from tests.test_lessons_api import body_with, has_named, named
from tests.test_lessons_failover import serve_process
from tests.test_lessons_flow import client_for

_topics = itertools.count()


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    """Offline tutor at 2 ms a token, partials every 20 ms: a lesson streams for ~2 s."""
    settings = make_settings(
        offline_pace_ms=2,
        beat_partial_ms=20,
        sse_heartbeat_s=1.0,
        limit_plan_anon_per_hour=1000,
    )
    with serve_app(settings, db_url) as base_url:
        yield base_url


def fresh_lesson(client: httpx.Client) -> str:
    """A lesson on a topic of its own, so no beat comes from the cache (all of them stream)."""
    topic = f"Standing waves {next(_topics)} {time.monotonic_ns()}"
    r = client.post("/v1/plan", json=body_with("topic", topic))
    assert r.status_code == 200, r.text
    lesson_id: str = r.json()["lesson_id"]
    return lesson_id


def assemble(events: list[Sse]) -> tuple[dict[str, Any] | None, dict[int, Any]]:
    plan: dict[str, Any] | None = None
    beats: dict[int, Any] = {}
    for e in events:
        if e.event == "plan_ready":
            plan = e.data["plan"]
            for ord in e.data.get("superseded", []):
                beats.pop(ord, None)
        elif e.event == "beat_complete":
            beats[e.data["ord"]] = e.data["content_json"]
    return plan, beats


def replayed(client: httpx.Client, lesson_id: str) -> tuple[dict[str, Any], dict[int, Any]]:
    """The lesson a full read of the log shows (beat 1 came with POST /v1/plan, not the stream)."""
    lesson = client.get(f"/v1/lesson/{lesson_id}").json()
    assert lesson["status"] == "complete", lesson["status"]
    beats = {b["ord"]: b["content_json"] for b in lesson["beats"] if b["ord"] > 1}
    return lesson["plan"], beats


def check_ids(events: list[Sse]) -> None:
    seqs = [int(e.id.rsplit("-", 1)[1]) for e in events if e.id]
    assert len(seqs) == len(events)
    assert seqs == sorted(set(seqs))  # only increasing: nothing twice


def completed_once_per_revision(db_url: str, lesson_id: str) -> None:
    """Every beat of the final plan is completed exactly once since it was last superseded."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT e.type, e.payload_json || coalesce(p.fields, '{}') FROM events AS e"
            " LEFT JOIN personal_data AS p ON p.event_id = e.id"
            " WHERE e.lesson_id = %s ORDER BY e.lesson_seq",
            (lesson_id,),
        ).fetchall()
    since: dict[int, int] = {}
    plan: dict[str, Any] = {}
    for kind, p in rows:
        if kind == "plan.revised":
            plan = p["plan"]
            for ord in p["superseded"]:
                since[ord] = 0
        elif kind == "beat.completed":
            since[p["ord"]] = since.get(p["ord"], 0) + 1
    assert {b["ord"]: since.get(b["ord"]) for b in plan["beats"]} == {
        b["ord"]: 1 for b in plan["beats"]
    }
    assert [k for k, _ in rows].count("lesson.completed") == 1


def reconnecting_reader(
    client: httpx.Client, lesson_id: str, cuts: list[int], out: list[Sse]
) -> None:
    """Drop the connection after k events, resume from the last id, again and again."""
    last_id: str | None = None
    for k in [*cuts, 10_000]:
        result = read_stream(client, lesson_id, last_id, stop=partial(has_named, k))
        if result.status == 204:
            return
        out += named(result.events)
        last_id = out[-1].id if out else None
        if result.closed_by_server:
            return


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    adjust_after=st.integers(min_value=1, max_value=25),
    cuts=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=6),
)
def test_adjust_mid_stream_live_and_reconnecting_readers_agree_with_replay(
    server: str, db_url: str, adjust_after: int, cuts: list[int]
) -> None:
    with client_for(server) as client:
        lesson_id = fresh_lesson(client)
        answers: list[httpx.Response] = []

        def adjust_once(events: list[Sse]) -> bool:
            if not answers and len(named(events)) >= adjust_after:
                answers.append(
                    client.post(f"/v1/lesson/{lesson_id}/adjust", json={"level": "easier"})
                )
            return False

        reconnected: list[Sse] = []
        other = threading.Thread(
            target=reconnecting_reader, args=(client, lesson_id, cuts, reconnected)
        )
        other.start()
        live = named(read_stream(client, lesson_id, stop=adjust_once).events)
        other.join(timeout=60)
        assert not other.is_alive()
        [adjusted] = answers
        assert adjusted.status_code == 200, adjusted.text
        revision = adjusted.json()["revision_num"]
        assert revision == 2
        final = replayed(client, lesson_id)
        for events in (live, reconnected):
            check_ids(events)
            assert events[-1].event == "lesson_complete"
            assert assemble(events) == final
        # After the new plan_ready, the beats the live reader gets carry the new revision.
        at = next(i for i, e in enumerate(live) if e.data.get("revision_num") == revision)
        assert all(
            e.data["revision"] == revision
            for e in live[at:]
            if e.event in {"beat_partial", "beat_complete"}
        )
        # A reader that joins afterwards gets no superseded beat at all.
        late = named(read_stream(client, lesson_id).events)
        assert assemble(late) == final
        superseded = set(live[at].data["superseded"])
        firsts = [e for e in late if e.event == "beat_complete" and e.data["ord"] in superseded]
        assert all(e.data["revision"] == revision for e in firsts)
        assert len(firsts) == len({e.data["ord"] for e in firsts})
    completed_once_per_revision(db_url, lesson_id)


def test_two_adjusts_in_a_row_and_one_regenerated_beat(server: str, db_url: str) -> None:
    with client_for(server) as client:
        lesson_id = fresh_lesson(client)
        answers: list[httpx.Response] = []

        def adjust_twice(events: list[Sse]) -> bool:
            if not answers and any(e.event == "beat_partial" for e in events):
                url = f"/v1/lesson/{lesson_id}/adjust"
                answers.append(client.post(url, json={"level": "harder"}))
                answers.append(client.post(url, json={"feedback": "more pictures"}))
                answers.append(client.post(url, json={"regenerate_beat": 2}))
            return False

        live = named(read_stream(client, lesson_id, stop=adjust_twice).events)
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        assert [a.json()["revision_num"] for a in answers] == [2, 3, 4]
        final = replayed(client, lesson_id)
        assert final[0] == answers[1].json()["plan"]  # regenerating a beat keeps the plan
        assert assemble(live) == final
        assert assemble(named(read_stream(client, lesson_id).events)) == final
        check_ids(live)
    completed_once_per_revision(db_url, lesson_id)

    def projected() -> bool:  # the beats table (lessons projection) shows the same lesson
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT ord, content_json FROM beats WHERE lesson_id = %s AND ord > 1"
                " AND status = 'ready'",
                (lesson_id,),
            ).fetchall()
        return dict(rows) == final[1]

    wait_for(projected, what="the beats table to show the final lesson")


def test_adjust_racing_the_last_beat(server: str, db_url: str) -> None:
    """Whichever reaches the log first wins: the lesson completes (adjust 409) or the last
    beat is superseded and written again; either way one consistent lesson."""
    with client_for(server) as client:
        lesson_id = fresh_lesson(client)
        total = len(client.get(f"/v1/lesson/{lesson_id}").json()["beats"])
        answers: list[httpx.Response] = []

        def adjust_at_last_beat(events: list[Sse]) -> bool:
            last = events[-1]
            if not answers and last.event == "beat_partial" and last.data["ord"] == total:
                answers.append(
                    client.post(
                        f"/v1/lesson/{lesson_id}/adjust",
                        json={"feedback": "one more example", "current_beat_ord": total - 1},
                    )
                )
            return False

        live = named(read_stream(client, lesson_id, stop=adjust_at_last_beat).events)
        [answer] = answers
        assert answer.status_code in {200, 409}, answer.text
        final = replayed(client, lesson_id)
        assert assemble(live) == final
        assert final[0]["beats"][-1]["title"].startswith("Revised") == (answer.status_code == 200)
    completed_once_per_revision(db_url, lesson_id)


@pytest.mark.slow
def test_adjust_while_the_owner_is_dead(db_url: str, tmp_path: Path) -> None:
    """The owner is killed mid-beat; the adjust lands before anyone took the lesson over; the
    survivor takes it over under the new plan."""
    with ExitStack() as stack:
        a_url, a_proc = stack.enter_context(serve_process(db_url, tmp_path / "a.log"))
        b_url, b_proc = stack.enter_context(serve_process(db_url, tmp_path / "b.log"))
        procs = {a_proc.pid: (a_url, a_proc), b_proc.pid: (b_url, b_proc)}
        a = stack.enter_context(student_client(a_url, timeout=30))
        assert a.post("/v1/session").status_code == 201
        lesson_id = fresh_lesson(a)
        first = read_stream(
            a,
            lesson_id,
            stop=lambda evs: any(e.event == "beat_partial" and e.data["ord"] == 3 for e in evs),
        )
        received = named(first.events)
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
        b = stack.enter_context(student_client(survivor_url, timeout=30, cookies=a.cookies))
        r = b.post(f"/v1/lesson/{lesson_id}/adjust", json={"level": "easier"})
        assert r.status_code == 200, r.text
        rest = read_stream(b, lesson_id, received[-1].id, deadline_s=90)
        received += named(rest.events)
        check_ids(received)
        final = wait_for(lambda: replayed(b, lesson_id))
        assert assemble(received) == final
    completed_once_per_revision(db_url, lesson_id)
