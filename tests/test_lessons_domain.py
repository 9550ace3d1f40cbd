"""The lesson aggregate's pure functions: decide/evolve invariants under racing workers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commands.errors import CommandError, Conflict
from commands.lesson_model import (
    LessonState,
    NewLesson,
    Superseded,
    decide_abandon,
    decide_complete_beat,
    decide_create,
    decide_lock,
    decide_partial,
    decide_start_beat,
    evolve,
)
from commands.providers import BeatContent, Plan, PlanBeat
from eventstore.events import ABANDONED, READY, DomainEvent

NOW = datetime(2026, 5, 10, tzinfo=UTC)
PLAN = Plan(
    summary="20 min",
    beats=tuple(PlanBeat(i, "concept", f"b{i}", 4) for i in range(1, 5)),
    after="more",
)
CONTENT = BeatContent({"title": "t", "body": "b", "key_points": ["k"]}, "n")


def fold_all(events: list[DomainEvent]) -> LessonState:
    s = LessonState(lesson_id="L")
    for e in events:
        s = evolve(s, e, NOW)
    return s


def opened() -> list[DomainEvent]:
    lesson = NewLesson("u", "s", "physics", "waves", "ug", {}, None, None)
    events = decide_create(
        LessonState(lesson_id="L"),
        lesson,
        PLAN,
        CONTENT,
        "B1",
        model="offline",
        runs=(),
        trace_id="req_x",
        cache_hit=False,
    )
    return events + decide_lock(fold_all(events))


@dataclass
class Worker:
    state: LessonState
    ord: int = 0
    attempt: int = 0


def test_lock_is_once_and_abandon_is_idempotent() -> None:
    log = opened()
    state = fold_all(log)
    assert state.status == "active"
    assert decide_lock(state) == []
    gone = evolve(state, decide_abandon(state)[0], NOW)
    assert gone.status == ABANDONED
    assert decide_abandon(gone) == []
    with pytest.raises(Superseded):
        decide_start_beat(gone, 2, "B2", "offline")


def test_complete_lesson_refuses_abandon() -> None:
    log = opened()
    for ord in range(2, 5):
        s = fold_all(log)
        log += decide_start_beat(s, ord, f"B{ord}", "offline")
        s = fold_all(log)
        log += decide_complete_beat(s, ord, s.beat(ord).attempt, CONTENT, now=NOW)
    final = fold_all(log)
    assert final.status == "complete"
    assert [type(e).__name__ for e in log].count("LessonCompleted") == 1
    with pytest.raises(Conflict):
        decide_abandon(final)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["start", "partial", "complete"]))))
def test_racing_workers_never_complete_a_beat_twice(schedule: list[tuple[int, str]]) -> None:
    """Three workers with stale views; an append only lands on the state it was decided on."""
    log = opened()
    workers = [Worker(fold_all(log)) for _ in range(3)]
    for who, action in schedule:
        w = workers[who]
        for _ in range(2):  # decide, and once more after a conflict (re-read the log)
            try:
                if action == "start":
                    nxt = w.state.next_beat()
                    if nxt is None:
                        break
                    events = decide_start_beat(w.state, nxt.ord, f"B{nxt.ord}", "offline")
                elif action == "partial":
                    events = decide_partial(w.state, w.ord, w.attempt, "tok ")
                else:
                    events = decide_complete_beat(w.state, w.ord, w.attempt, CONTENT, now=NOW)
            except CommandError:  # refused: superseded, or no such beat
                break
            if w.state.version != len(log):  # expected_seq is stale: the append conflicts
                w.state = fold_all(log)
                continue
            log += events
            w.state = fold_all(log)
            if action == "start":
                nxt_ord = events[0].ord  # type: ignore[union-attr]
                w.ord, w.attempt = nxt_ord, w.state.beat(nxt_ord).attempt
            break
    names = [(type(e).__name__, getattr(e, "ord", None)) for e in log]
    completed = [o for n, o in names if n == "BeatCompleted" and isinstance(o, int)]
    assert completed == sorted(set(completed))
    assert names.count(("LessonCompleted", None)) <= 1
    final = fold_all(log)
    assert all(b.status == READY for b in final.beats if b.ord in completed)
