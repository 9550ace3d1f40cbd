"""Issue 15's fault tests against `omnitutor serve` processes: kill -9 and a database outage.

* Crash: 30 plans in flight with distinct Idempotency-Keys, the server killed with SIGKILL,
  a new server started on the same database, the same 30 requests retried (honouring
  409 + Retry-After): each is answered within 10 s, and exactly 30 lessons exist, each the
  one its answer names; a request answered before the kill gets the same lesson again.
* Outage: the embedded cluster stopped with `pg_ctl stop -m immediate` under a running
  server: requests answer 503 `service_unavailable` with Retry-After within 1 s, readyz 503
  with sanitised checks; started again, the service is ready within 2 s, and every event a
  client was sent before the outage is still in the log.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import psycopg
import pytest

from tests.conditions import wait_for
from tests.live import serve_process
from tests.sse import read_stream
from tests.test_lessons_api import body_with, durable, named
from tests.test_lessons_flow import PLAN_BODY

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

SERVER_ENV = {
    "OMNITUTOR_DEV_HTTP": "1",
    "OMNITUTOR_PROVIDER": "offline",
    "OMNITUTOR_OFFLINE_PACE_MS": "5",
    "OMNITUTOR_BEAT_PARTIAL_MS": "100",
    "OMNITUTOR_SSE_HEARTBEAT_S": "1",
    "OMNITUTOR_LIMIT_PLAN_ANON_PER_HOUR": "1000",
    "OMNITUTOR_LOG_LEVEL": "warning",
    "OMNITUTOR_LOG_FORMAT": "json",
}


def serve(env: dict[str, str], log_path: Path) -> AbstractContextManager[tuple[str, Popen[bytes]]]:
    """`omnitutor serve` with this module's settings (SERVER_ENV), plus `env`."""
    return serve_process({**SERVER_ENV, **env}, log_path)


def plan_body(n: int) -> dict[str, Any]:
    # Distinct topics: no plan-cache hit hides a request that ran twice.
    return body_with("topic", f"Crash topic number {n}")


def post_until_answered(
    base: str, cookies: httpx.Cookies, key: str, body: dict[str, Any], deadline_s: float
) -> tuple[httpx.Response, float, int]:
    """POST /v1/plan with `key` until it is not 409-still-running; (answer, seconds, tries)."""
    started = time.monotonic()
    tries = 0
    with httpx.Client(base_url=base, cookies=cookies, timeout=deadline_s) as c:
        while True:
            tries += 1
            r = c.post("/v1/plan", json=body, headers={"Idempotency-Key": key})
            waited = time.monotonic() - started
            if r.status_code != 409 or not r.json()["recoverable"]:
                return r, waited, tries
            if waited > deadline_s:
                raise TimeoutError(f"key {key} still running after {waited:.1f}s")
            # The server's Retry-After, as a client honours it (a wait the answer names).
            time.sleep(int(r.headers["retry-after"]))


def lessons_created(db_url: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT lesson_id FROM events WHERE type = 'lesson.created' ORDER BY lesson_id"
        ).fetchall()
    return [r[0] for r in rows]


def test_kill_9_with_30_plans_in_flight_then_retry_each_once(db_url: str, tmp_path: Path) -> None:
    keys = [str(uuid.uuid4()) for _ in range(30)]
    first: dict[int, httpx.Response | Exception] = {}
    with serve({"DATABASE_URL": db_url}, tmp_path / "a.log") as (base, proc):
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.post("/v1/session").status_code == 201
            cookies = c.cookies

        def send(n: int) -> None:
            try:
                with httpx.Client(base_url=base, cookies=cookies, timeout=30) as c:
                    first[n] = c.post(
                        "/v1/plan", json=plan_body(n), headers={"Idempotency-Key": keys[n]}
                    )
            except httpx.TransportError as e:
                first[n] = e

        with ThreadPoolExecutor(max_workers=30) as pool:
            for n in range(30):
                pool.submit(send, n)
            # Kill once some lessons are committed and most are not: mid-flight.
            wait_for(lambda: len(lessons_created(db_url)) >= 1, deadline_s=30, interval_s=0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    before = len(lessons_created(db_url))
    answered_before = {n: r for n, r in first.items() if isinstance(r, httpx.Response)}
    print(
        f"\nkilled with {before} lessons committed; {len(answered_before)} of 30 answered "
        "before the kill"
    )
    assert before < 30, "every plan finished before the kill: nothing was in flight"

    with (
        serve({"DATABASE_URL": db_url}, tmp_path / "b.log") as (base, _),
        ThreadPoolExecutor(max_workers=30) as pool,
    ):
        retried = list(
            pool.map(
                lambda n: post_until_answered(base, cookies, keys[n], plan_body(n), 10),
                range(30),
            )
        )
    waits = sorted(waited for _, waited, _ in retried)
    print(
        f"retries: answered in {waits[0]:.2f}s to {waits[-1]:.2f}s (median {waits[15]:.2f}s), "
        f"{max(tries for _, _, tries in retried)} tries at most"
    )
    for r, _, _ in retried:
        assert r.status_code == 200, r.text
    answered = [r.json()["lesson_id"] for r, _, _ in retried]
    assert sorted(answered) == lessons_created(db_url)
    assert len(set(answered)) == 30
    for n, r in answered_before.items():
        if r.status_code == 200:
            assert r.json()["lesson_id"] == answered[n]  # the stored answer, not a new run


# ---- database outage on the embedded cluster ----------------------------------------------


def stop_immediately(pgdata: Path) -> None:
    """`pg_ctl stop -m immediate`: SIGQUIT to the postmaster (pg_ctl sends the same signal;
    sent directly because pg_ctl must run as the cluster's owner, who cannot always reach
    pytest's private temporary directory)."""
    postmaster = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    os.kill(postmaster, signal.SIGQUIT)
    wait_for(lambda: not _alive(postmaster), deadline_s=30, interval_s=0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_again(pgdata: Path) -> None:
    """Start the cluster as pgserver does (same socket, same owner), and leave it running."""
    from pgserver.postgres_server import get_server

    get_server(pgdata, cleanup_mode=None)


def test_database_outage_fails_fast_and_recovers_promptly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with serve({"OMNITUTOR_HOME": str(home)}, tmp_path / "serve.log") as (base, _):
        pgdata = home.resolve() / "pgdata"
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.post("/v1/session").status_code == 201
            acknowledged = c.post("/v1/plan", json=PLAN_BODY, headers={"Idempotency-Key": "a"})
            assert acknowledged.status_code == 200
            lesson_id = acknowledged.json()["lesson_id"]
            seen = named(
                read_stream(
                    c,
                    lesson_id,
                    stop=lambda evs: any(e.event == "beat_complete" for e in evs),
                ).events
            )

            stop_immediately(pgdata)
            stopped_at = time.monotonic()
            # Within 1 s each (the client's own deadline), whatever the route.
            during = {
                "plan": c.post(
                    "/v1/plan", json=PLAN_BODY, headers={"Idempotency-Key": "b"}, timeout=1
                ),
                "lesson": c.get(f"/v1/lesson/{lesson_id}", timeout=1),
                "session": c.post("/v1/session", timeout=1),
                "readyz": c.get("/v1/readyz", timeout=1),
            }
            for name, r in during.items():
                assert r.status_code == 503, (name, r.text)
                body = r.json()
                assert body["code"] == "service_unavailable", (name, body)
                assert body["recoverable"] is True
                assert r.headers["retry-after"] == "1"
                assert str(pgdata) not in r.text
                assert "socket" not in r.text.lower()
            assert during["readyz"].json()["checks"] == {"database": "unavailable"}
            outage_s = time.monotonic() - stopped_at

            start_again(pgdata)
            restarted_at = time.monotonic()
            wait_for(
                lambda: c.get("/v1/readyz", timeout=2).status_code == 200,
                deadline_s=2,
                interval_s=0.02,
            )
            ready_s = time.monotonic() - restarted_at
            after = c.post("/v1/plan", json=PLAN_BODY, headers={"Idempotency-Key": "c"})
            assert after.status_code == 200, after.text
            first_event_s = time.monotonic() - restarted_at
            replay = named(read_stream(c, lesson_id).events)
    print(
        f"\noutage {outage_s:.2f}s for 4 requests; ready {ready_s:.2f}s after the database "
        f"returned; a new plan answered {first_event_s:.2f}s after it"
    )
    # Nothing a client was sent before the outage is missing after it (a fresh read skips
    # the partials of complete beats, so compare what every read carries whole).
    assert durable(seen) == durable(replay)[: len(durable(seen))]
    assert durable(seen)
    assert replay[-1].event == "lesson_complete"
