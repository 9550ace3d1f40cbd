"""GET /v1/lessons: the student's library, newest first, keyset-paginated."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.events import LessonCreated, LessonDeleted
from eventstore.ids import new_id
from eventstore.store import EventMeta, EventStore, NewEvent
from projections.reads import list_lessons
from projections.runner import ProjectionRunner
from tests.accounts_kit import eventually, library, plan, running, student
from tests.lesson_log import user_and_session

pytestmark = pytest.mark.anyio


async def create(store: EventStore, user_id: str, session_id: str, topic: str) -> str:
    lesson_id = new_id()
    event = LessonCreated(session_id, user_id, "physics", topic, "hs", {"why": "homework"})
    meta = EventMeta(user_id=user_id, session_id=session_id)
    await store.append(lesson_id, [NewEvent.of(event, meta)], 0)
    return lesson_id


async def test_pages_miss_and_repeat_nothing_while_lessons_are_added(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    runner = ProjectionRunner(pool)
    user_id, session_id = await user_and_session(pool)
    existing = [await create(store, user_id, session_id, f"topic {i}") for i in range(57)]
    await store.sequence()
    await runner.catch_up()
    added: list[str] = []
    seen: list[str] = []
    paging_done = asyncio.Event()

    async def keep_adding() -> None:
        while not paging_done.is_set():
            added.append(await create(store, user_id, session_id, "a newer lesson"))
            await store.sequence()
            await runner.catch_up()

    async def page_through() -> None:
        cursor = None
        while True:
            page = await list_lessons(pool, user_id, limit=7, cursor=cursor)
            seen.extend(row["id"] for row in page.lessons)
            await asyncio.sleep(0)  # let the writer in between every two pages
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        paging_done.set()

    await asyncio.gather(keep_adding(), page_through())
    assert added  # lessons really were added during the walk
    assert len(seen) == len(set(seen))  # nothing repeated
    assert set(existing) <= set(seen)  # nothing that existed at the start was missed
    assert set(seen) - set(existing) <= set(added)
    assert seen == sorted(seen, reverse=True)  # newest first (ULIDs sort by time)


def test_the_library_over_http(db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as base, student(base) as client, student(base) as other:
        lessons = [plan(client, f"topic {i}") for i in range(3)]
        plan(other, "not mine")
        got = eventually(lambda: library(client, limit=2), lambda ids: len(ids) == 2)
        assert got == lessons[::-1][:2]
        first = client.get("/v1/lessons", params={"limit": 2}).json()
        assert first["ok"] is True
        assert first["trace_id"].startswith("req_")
        row = first["lessons"][0]
        assert set(row) == {
            "lesson_id", "subject", "topic", "status", "created_at", "completed_at",
            "total_beats", "beats_completed",
        }  # fmt: skip
        assert (row["subject"], row["topic"], row["status"]) == ("physics", "topic 2", "draft")
        assert row["total_beats"] >= 1
        assert row["beats_completed"] == 1  # beat 1 comes with the plan
        second = client.get("/v1/lessons", params={"limit": 2, "cursor": first["next_cursor"]})
        assert [r["lesson_id"] for r in second.json()["lessons"]] == [lessons[0]]
        assert second.json()["next_cursor"] is None
        assert library(client) == lessons[::-1]  # default limit 20
        for bad in ("0", "101", "x", "-1"):
            r = client.get("/v1/lessons", params={"limit": bad})
            assert (r.status_code, r.json()["field"]) == (400, "limit")
        r = client.get("/v1/lessons", params={"cursor": "not-a-cursor"})
        assert (r.status_code, r.json()["field"]) == (400, "cursor")
        assert httpx.get(base + "/v1/lessons").status_code == 401  # no session


async def test_deleted_lessons_are_left_out(pool: AsyncConnectionPool[Any]) -> None:
    store = EventStore(pool)
    user_id, session_id = await user_and_session(pool)
    kept = await create(store, user_id, session_id, "kept")
    gone = await create(store, user_id, session_id, "gone")
    await store.append(gone, [NewEvent.of(LessonDeleted(), EventMeta())], 1)
    await store.sequence()
    await ProjectionRunner(pool).catch_up()
    page = await list_lessons(pool, user_id)
    assert [r["id"] for r in page.lessons] == [kept]
