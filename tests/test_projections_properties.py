"""Property: whatever the lesson histories and however the live runner's pages fall, the live
projections equal a fresh rebuild from position 0, table by table."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.events import (
    AudioReady,
    BeatCompleted,
    BeatFailed,
    BeatPartial,
    BeatStarted,
    DomainEvent,
    InteractionRecorded,
    LessonAbandoned,
    LessonCompleted,
    LessonCreated,
    LessonDeleted,
    PlanLocked,
    PlanRevised,
)
from eventstore.ids import new_id
from eventstore.store import EventMeta, EventStore, NewEvent
from projections.rebuild import Rebuild
from projections.runner import ProjectionRunner
from tests.lesson_log import digests, plan, run, scratch_pool, user_and_session

pytestmark = pytest.mark.anyio

ACTIONS = (
    "start",
    "complete",
    "complete_unstarted",
    "fail",
    "regenerate",
    "partial",
    "audio",
    "interact",
    "run",
    "session_run",
    "orphan_run",
    "revise",
    "lock",
    "finish",
    "abandon",
    "delete",
)


@dataclass
class History:
    """One lesson's events, built from drawn actions so that every event is valid."""

    user_id: str
    session_id: str
    lesson_id: str = field(default_factory=new_id)
    events: list[DomainEvent] = field(default_factory=list)
    unordered: list[tuple[int, DomainEvent, str | None]] = field(default_factory=list)


def build(actions: list[tuple[str, int]], user_id: str, session_id: str) -> History:
    h = History(user_id, session_id)
    beats = 3
    revision = 1
    started: dict[int, str] = {}
    h.events += [
        LessonCreated(session_id, user_id, "math", "limits", "ug", {"why": "exam"}),
        PlanRevised(1, plan(beats), "initial"),
    ]
    for action, n in actions:
        ord_ = 1 + n % (beats + 1)  # sometimes past the plan's last beat
        if action == "start":
            started[ord_] = started.get(ord_) or new_id()
            h.events.append(BeatStarted(ord_, started[ord_], "concept", f"t{ord_}", "sonnet-4-6"))
        elif action == "regenerate":
            started[ord_] = new_id()
            h.events.append(BeatStarted(ord_, started[ord_], "problem", f"r{ord_}", "opus-4-7"))
        elif action in {"complete", "complete_unstarted"}:
            beat_id = started.get(ord_) or new_id()
            audio = None if n % 2 else f"https://cdn/a/{n}.mp3"
            h.events.append(
                BeatCompleted(ord_, beat_id, "concept", {"n": n}, f"narration {n}", audio)
            )
        elif action == "fail":
            h.events.append(BeatFailed(ord_, started.get(ord_) or new_id(), "timeout", "slow"))
        elif action == "partial":
            h.events.append(BeatPartial(ord_, f"delta {n}", reset=n % 3 == 0))
        elif action == "audio":
            h.events.append(AudioReady(ord_, f"https://cdn/b/{n}.mp3"))
        elif action == "interact":
            beat_ord = None if n % 3 == 0 else ord_
            h.events.append(InteractionRecorded(new_id(), "ask", {"q": n}, {"a": n}, beat_ord))
        elif action == "run":
            h.events.append(run(cost=n / 1000, beat_ord=None if n % 4 == 0 else ord_))
        elif action == "session_run":
            h.unordered.append((len(h.events), run(purpose="moderation", cost=n / 7), None))
        elif action == "orphan_run":
            h.unordered.append((len(h.events), run(purpose="moderation", cost=0.5), new_id()))
        elif action == "revise":
            revision += 1
            trigger = "adjust" if n % 2 else "iterate"
            h.events.append(PlanRevised(revision, plan(beats, f"v{revision}"), trigger, "more"))
        elif action == "lock":
            h.events.append(PlanLocked(revision, beats))
        elif action == "finish":
            h.events.append(LessonCompleted(n, {"sonnet": n / 100}))
        elif action == "abandon":
            h.events.append(LessonAbandoned(ord_))
        elif action == "delete":
            h.events.append(LessonDeleted())
    return h


histories = st.lists(
    st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 20)), max_size=14),
    min_size=1,
    max_size=4,
)
schedule = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3), st.integers(0, 2)), max_size=40)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    drawn=histories,
    steps=schedule,
    page_size=st.integers(1, 6),
    rebuild_page=st.integers(1, 40),
)
async def test_live_projections_equal_a_fresh_rebuild(
    pg_admin_url: str,
    template_db: str,
    drawn: list[list[tuple[str, int]]],
    steps: list[tuple[int, int, int]],
    page_size: int,
    rebuild_page: int,
) -> None:
    async with scratch_pool(pg_admin_url, template_db) as pool:
        store = EventStore(pool)
        user_id, session_id = await user_and_session(pool)
        lessons = [build(actions, user_id, session_id) for actions in drawn]
        cursor = dict.fromkeys(range(len(lessons)), 0)
        emitted: set[tuple[int, int]] = set()
        runner = ProjectionRunner(pool, page_size=page_size)
        meta = EventMeta(session_id=session_id)

        async def advance(i: int, count: int) -> None:
            h = lessons[i]
            start = cursor[i]
            batch = h.events[start : start + count]
            for k, (at, event, lesson_ref) in enumerate(h.unordered):
                if (i, k) not in emitted and at < start + count:
                    emitted.add((i, k))
                    await store.append_unordered([NewEvent.of(event, meta)], lesson_id=lesson_ref)
            if batch:
                await store.append(
                    h.lesson_id, [NewEvent.of(e, meta) for e in batch], expected_seq=start
                )
            cursor[i] = start + len(batch)

        for lesson, count, then in steps:
            await advance(lesson % len(lessons), count)
            if then == 1:
                await store.sequence()
            elif then == 2:
                await store.sequence()
                await runner.catch_up()
        for i, h in enumerate(lessons):
            await advance(i, len(h.events) + 1)
        await store.sequence()
        steps_done = await runner.catch_up()
        assert {s.state for s in steps_done.values()} == {"running"}, steps_done
        live = await digests(pool)
        result = await Rebuild(pool, page_size=rebuild_page).run()
        assert result.position == await store.head_position()
        assert await digests(pool) == live
