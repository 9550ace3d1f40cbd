"""An abandon received by one process stops the generation another process owns, within a
second, even while the owner is between appends (it learns at its next lease renewal)."""

from __future__ import annotations

from tests.conditions import seconds_until
from tests.conftest import make_settings
from tests.live import serve_with_deps, student_client
from tests.sse import read_stream
from tests.test_lessons_flow import PLAN_BODY


def test_abandon_through_another_process_stops_the_owner_within_a_second(db_url: str) -> None:
    # The owner appends a partial only every 30 s, so nothing but the lease tells it.
    owner_settings = make_settings(offline_pace_ms=50, beat_partial_ms=30_000)
    other_settings = make_settings(max_generations=0)
    with (
        serve_with_deps(owner_settings, db_url) as (owner_url, owner),
        serve_with_deps(other_settings, db_url) as (other_url, _),
        student_client(owner_url, timeout=30) as client,
    ):
        assert client.post("/v1/session").status_code == 201
        lesson_id = client.post("/v1/plan", json=PLAN_BODY).json()["lesson_id"]
        read_stream(
            client, lesson_id, stop=lambda events: any(e.event == "plan_ready" for e in events)
        )
        seconds_until(lambda: lesson_id in owner.supervisor.workers, 5, "owner generating")
        with student_client(other_url, timeout=30, cookies=client.cookies) as elsewhere:
            assert elsewhere.post(f"/v1/lesson/{lesson_id}/abandon").status_code == 200
        stopped = seconds_until(lambda: lesson_id not in owner.supervisor.workers, 5, "stopped")
    assert stopped < 1.0  # the bound: generation stops within a second
