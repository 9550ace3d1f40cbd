"""Plan revisions in the lesson aggregate: pure decide/evolve, racing workers and adjusts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commands.errors import CommandError, Conflict
from commands.interaction_input import resolve_level, validate_adjust, validate_whiteboard
from commands.lesson_model import (
    Revision,
    RevisionSuperseded,
    decide_adjust,
    decide_complete_beat,
    decide_iterate,
    decide_partial,
    decide_start_beat,
    plan_json,
)
from eventstore.events import (
    READY,
    BeatCompleted,
    InteractionRecorded,
    LessonCompleted,
    PlanRevised,
    from_payload,
)
from tests.test_lessons_domain import CONTENT, NOW, PLAN, Worker, fold_all, opened

NOTE = InteractionRecorded("I", "adjust", {}, None)


def revision(current: int, title: str = "new") -> Revision:
    beats = [
        {"ord": b.ord, "kind": b.kind, "title": f"{title} {b.ord}", "est_min": b.est_min}
        for b in PLAN.beats
    ]
    return Revision(
        plan={**plan_json(PLAN), "beats": beats},
        triggered_by="adjust",
        feedback_text="slower",
        current_ord=current,
    )


def test_adjust_supersedes_beats_after_current_and_keeps_the_rest() -> None:
    log = opened()
    s = fold_all(log)
    log += decide_start_beat(s, 2, "B2", "offline")
    s = fold_all(log)
    log += decide_complete_beat(s, 2, s.beat(2).attempt, CONTENT, now=NOW)
    s = fold_all(log)
    log += decide_start_beat(s, 3, "B3", "offline")
    streaming = fold_all(log)
    log += decide_adjust(streaming, revision(2), NOTE)
    s = fold_all(log)
    assert s.revision_num == 2
    assert [b.title for b in s.beats] == ["b1", "b2", "new 3", "new 4"]  # ≤ current kept
    assert [b.status for b in s.beats] == [READY, READY, "pending", "pending"]
    revised = log[-2]
    assert isinstance(revised, PlanRevised)
    assert revised.superseded == [3, 4]
    # The worker streaming beat 3 learns of it at its next decision, and goes on.
    with pytest.raises(RevisionSuperseded):
        decide_partial(s, 3, streaming.beat(3).attempt, "tok")
    with pytest.raises(RevisionSuperseded):
        decide_start_beat(s, 3, "B3", "offline", revision=1)
    assert decide_start_beat(s, 3, "B3b", "offline", revision=2)


def test_adjust_after_the_lesson_completed_is_a_conflict() -> None:
    log = opened()
    for ord in range(2, 5):
        s = fold_all(log)
        log += decide_start_beat(s, ord, f"B{ord}", "offline")
        s = fold_all(log)
        log += decide_complete_beat(s, ord, s.beat(ord).attempt, CONTENT, now=NOW)
    with pytest.raises(Conflict):
        decide_adjust(fold_all(log), revision(2), NOTE)
    with pytest.raises(Conflict):  # iterate is for drafts only
        decide_iterate(
            fold_all(log),
            PLAN,
            CONTENT,
            "B1",
            model="offline",
            feedback_text=None,
            interaction=NOTE,
        )


def test_v1_plan_revised_is_upcast() -> None:
    old = {"revision_num": 1, "plan": {"beats": []}, "triggered_by": "initial"}
    event = from_payload(PlanRevised.TYPE, 1, old)
    assert isinstance(event, PlanRevised)
    assert event.superseded == []
    assert event.level is None


def test_input_validation_names_fields() -> None:
    with pytest.raises(CommandError) as e:
        validate_adjust({"regenerate_beat": 2, "level": "easier"})
    assert e.value.details["field"] == "level"
    with pytest.raises(CommandError) as e:
        validate_adjust({})
    assert e.value.details["field"] == "level"
    assert validate_adjust({"level": "High School"}).level == "hs"
    assert resolve_level("pop", "easier") == ("pop", "easier")
    assert resolve_level("ug", "harder") == ("grad", "harder")
    with pytest.raises(CommandError) as e:
        validate_whiteboard({"image": "aGVsbG8="})  # "hello": not an image
    assert e.value.details["field"] == "image"


ACTIONS = st.sampled_from(["start", "partial", "complete", "adjust"])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), ACTIONS, st.integers(1, 4)), max_size=40))
def test_revisions_never_complete_a_current_beat_twice(
    schedule: list[tuple[int, str, int]],
) -> None:
    """Three workers with stale views and a student adjusting at random moments."""
    log = opened()
    workers = [Worker(fold_all(log)) for _ in range(3)]
    for who, action, current in schedule:
        w = workers[who]
        for _ in range(2):  # decide, and once more after a conflict (re-read the log)
            try:
                if action == "adjust":
                    events = decide_adjust(w.state, revision(current, f"r{len(log)}"), NOTE)
                elif action == "start":
                    nxt = w.state.next_beat()
                    if nxt is None:
                        break
                    events = decide_start_beat(
                        w.state, nxt.ord, f"B{nxt.ord}", "offline", w.state.revision_num
                    )
                elif action == "partial":
                    events = decide_partial(w.state, w.ord, w.attempt, "tok ")
                else:
                    events = decide_complete_beat(w.state, w.ord, w.attempt, CONTENT, now=NOW)
            except CommandError:  # refused: superseded, finished, no such beat
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
    # Per ord, completions since the revision that last superseded it: at most one.
    since: dict[int, int] = {}
    for e in log:
        if isinstance(e, PlanRevised):
            for o in e.superseded:
                since[o] = 0
        elif isinstance(e, BeatCompleted):
            since[e.ord] = since.get(e.ord, 0) + 1
            assert since[e.ord] == 1, f"beat {e.ord} completed twice in one revision"
    ended = [i for i, e in enumerate(log) if isinstance(e, LessonCompleted)]
    assert len(ended) <= 1
    if ended:  # nothing revises a finished lesson
        assert not any(isinstance(e, PlanRevised) for e in log[ended[0] :])
    final = fold_all(log)
    assert all((since.get(b.ord, 0) == 1) == (b.status == READY) for b in final.beats[1:])
