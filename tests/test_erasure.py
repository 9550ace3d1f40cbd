"""Erasure from an append-only log: after deletion and purge, a student's words are nowhere.

A student types a unique marker into a topic, the setup's free text, a question, a drawing's
text and a search; signs in with an address that carries it; deletes the account. After
`purge`, a `pg_dump` of the whole database holds the marker nowhere, while every other
student's lessons replay exactly as before, the log's positions and lesson sequences have
no gaps, and a projection rebuild equals the live tables.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from commands.privacy import purge
from eventstore.events import InteractionRecorded, LessonCreated
from eventstore.ids import new_id
from eventstore.store import EventMeta, EventStore, NewEvent
from ops.backup import libpq_args, pg_tool
from projections.rebuild import Rebuild
from projections.runner import ProjectionRunner
from tests.accounts_kit import latest_link, plan, running, student, token_of
from tests.conftest import make_settings
from tests.lesson_log import append_lesson, digests, simple_lesson, user_and_session

pytestmark = pytest.mark.anyio

MARKER = "qx7zebraquokka"


def dump(db_url: str) -> str:
    conninfo, env = libpq_args(db_url)
    out = subprocess.run(
        [str(pg_tool("pg_dump")), "--no-owner", "--dbname", conninfo],
        env=env,
        capture_output=True,
        check=True,
    )
    return out.stdout.decode()


def log_rows(db_url: str, lesson_ids: list[str]) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT id, lesson_id, lesson_seq, position, type, payload_json FROM events"
            " WHERE lesson_id = ANY(%s) ORDER BY lesson_id, lesson_seq",
            (lesson_ids,),
        ).fetchall()


async def replay(store: EventStore, lesson_ids: list[str]) -> list[tuple[Any, ...]]:
    """Every event of these lessons as the store reads it (personal fields merged)."""
    return [
        (e.id, e.lesson_seq, e.type, e.payload)
        for lesson_id in lesson_ids
        async for e in store.read_lesson(lesson_id)
    ]


def gap_free(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        positions = [p for (p,) in conn.execute("SELECT position FROM events ORDER BY position")]
        seqs = conn.execute(
            "SELECT lesson_id, array_agg(lesson_seq ORDER BY lesson_seq) FROM events"
            " WHERE lesson_seq IS NOT NULL GROUP BY lesson_id"
        ).fetchall()
    assert positions == list(range(1, len(positions) + 1))
    for _, seq in seqs:
        assert seq == list(range(1, len(seq) + 1))


async def test_a_purged_student_is_nowhere_and_everyone_else_is_untouched(
    db_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    store = EventStore(pool)
    other_user, other_session = await user_and_session(pool)
    others = [new_id(), new_id()]
    for lesson_id in others:
        await append_lesson(
            store, lesson_id, other_session, simple_lesson(other_user, other_session)
        )

    with running(db_url, tmp_path) as base, student(base) as victim, student(base) as bystander:
        theirs = plan(bystander, "the pendulum")
        others.append(theirs)
        mine = plan(victim, f"how {MARKER} migrate", free_text=f"I love {MARKER}s")
        r = victim.post(
            "/v1/event",
            json={"events": [{"type": "discovery.search", "ts": 1, "payload": {"query": MARKER}}]},
        )
        assert r.status_code == 202, r.text
        assert (
            victim.post("/v1/auth/magic-link", json={"email": f"{MARKER}@example.com"}).status_code
            == 202
        )
        link = latest_link(tmp_path, f"{MARKER}@example.com")
        assert victim.get("/v1/auth/consume", params={"token": token_of(link)}).status_code == 303
        session = victim.post("/v1/session").json()
        meta = EventMeta(user_id=session["user_id"], session_id=session["session_id"])
        head = await store.lesson_head(mine)
        asked = InteractionRecorded(
            new_id(),
            "ask",
            {"question": f"do {MARKER}s swim?"},
            {"answer": f"{MARKER}s do not"},
            1,
        )
        drawn = InteractionRecorded(
            new_id(),
            "whiteboard",
            {"text": f"a {MARKER} drawn", "strokes": [[0, 0, 1, 1]]},
            {"comment": "nice"},
            1,
        )
        await store.append(mine, [NewEvent.of(asked, meta), NewEvent.of(drawn, meta)], head)
        await store.sequence()
        assert MARKER in dump(db_url)  # it is there before, where the tests expects it

        before = await replay(store, others)
        before_rows = log_rows(db_url, others)
        cookie = victim.cookies["ot_session"]
        r = victim.delete("/v1/account")
        assert r.status_code == 200, r.text
        assert r.json()["lessons"] == 1
        assert 'ot_session=""' in r.headers["set-cookie"]  # the cookie is cleared
        async with httpx.AsyncClient(base_url=base, cookies={"ot_session": cookie}) as stale:
            assert (await stale.get("/v1/lessons")).status_code == 401
        assert bystander.get(f"/v1/lesson/{theirs}").status_code == 200

    # Thirty days later, as the daily timer does (--older-than 0: deleted before now).
    report = await purge(pool, store, make_settings(), older_than_days=0)
    assert report.users == 1
    assert report.lessons == 1
    assert report.vault_rows >= 5
    assert report.cache_rows >= 1  # the plan cached from the marker topic
    await store.sequence()
    await ProjectionRunner(pool).catch_up()

    text = dump(db_url)
    assert MARKER not in text
    assert MARKER.upper() not in text.upper()
    assert await replay(store, others) == before
    assert log_rows(db_url, others) == before_rows
    gap_free(db_url)
    live = await digests(pool)
    await Rebuild(pool, page_size=7).run()
    assert await digests(pool) == live
    # The victim's lesson still replays, with its personal fields erased.
    erased = await replay(store, [mine])
    assert [t for _, _, t, _ in erased][-2:] == ["lesson.deleted", "lesson.erased"]
    events = [e async for e in store.read_lesson(mine)]
    first = events[0].domain()
    assert isinstance(first, LessonCreated)
    assert (first.topic, first.intent, first.subject) == ("[erased]", {}, "physics")
    # A second purge finds nothing more to do.
    again = await purge(pool, store, make_settings(), older_than_days=0)
    assert again.users == 0
