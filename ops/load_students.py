"""The simulated student of `omnitutor bench load`: a locustfile, run by locust in its own
process (locust patches the standard library with gevent, so it never runs inside ours).

Each user repeats one flow: create a session → make a plan → stream the lesson to its
`lesson_complete` → ask a question → adjust the level. Every request and every SSE frame is
written as one JSON line to the file named by OMNITUTOR_LOAD_RECORDS, so the parent computes
its figures with the same percentile as every other benchmark (ops/benchkit.py) and can
join frames to the log for delivery lag. ask and adjust may not exist yet: their 404s are
recorded like any answer and counted apart by the parent.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, TextIO

import orjson
from locust import HttpUser, constant, events, task

STREAM = "GET /v1/lesson/:id/stream"
_records: TextIO | None = None


def _open_records(**_kwargs: Any) -> None:
    global _records  # one file per locust process, opened once the run starts
    _records = open(os.environ["OMNITUTOR_LOAD_RECORDS"], "a", buffering=1)  # noqa: SIM115


def _close_records(**_kwargs: Any) -> None:
    if _records is not None:
        _records.close()


# Registered by call: locust's add_listener is untyped, and as a decorator it would hide the
# functions' types from mypy.
events.test_start.add_listener(_open_records)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_close_records)  # type: ignore[no-untyped-call]


def record(**fields: Any) -> None:
    if _records is not None:
        _records.write(orjson.dumps(fields).decode() + "\n")


class Student(HttpUser):
    # No think time: each user starts its next step as soon as the last one answered, so the
    # concurrency is exactly the number of users.
    wait_time = constant(0)

    def call(self, method: str, path: str, route: str, **kwargs: Any) -> Any:
        started = time.time()
        with self.client.request(
            method, path, name=route, catch_response=True, **kwargs
        ) as response:
            status = response.status_code
            record(
                route=route,
                ms=(time.time() - started) * 1000,
                status=status,
                t=time.time(),
                error=None if status < 400 else response.text[:200],
            )
            # Our parent judges the answers; locust's own failure count would count a 404
            # from a route that has not landed yet as an error.
            response.success()
            return response

    @task
    def lesson(self) -> None:
        if self.call("POST", "/v1/session", "POST /v1/session").status_code >= 400:
            return
        plan = self.call(
            "POST",
            "/v1/plan",
            "POST /v1/plan",
            json={
                "subject": "physics",
                "topic": f"Hooke's law {uuid.uuid4().hex[:8]}",
                "intent": {"time": "30 min", "level": "first time"},
            },
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        if plan.status_code >= 400:
            return
        lesson_id = plan.json()["lesson_id"]
        if not self.stream(lesson_id):
            return
        self.call(
            "POST",
            f"/v1/lesson/{lesson_id}/ask",
            "POST /v1/lesson/:id/ask",
            json={"question": "Why does a stiffer spring stretch less?"},
        )
        self.call(
            "POST",
            f"/v1/lesson/{lesson_id}/adjust",
            "POST /v1/lesson/:id/adjust",
            json={"level": "easier"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )

    def stream(self, lesson_id: str) -> bool:
        """Read the lesson's SSE stream to its end; True if it completed."""
        started = time.time()
        completed = False
        status = 0
        error = None
        try:
            with self.client.get(
                f"/v1/lesson/{lesson_id}/stream",
                name=STREAM,
                headers={"Accept": "text/event-stream"},
                stream=True,
                catch_response=True,
                timeout=120,
            ) as response:
                status = response.status_code
                connected = time.time()
                record(sse_open=lesson_id, t=connected, ms=(connected - started) * 1000)
                response.success()
                seq, name = 0, ""
                for raw in response.iter_lines():
                    line = raw.decode() if isinstance(raw, bytes) else raw
                    if line.startswith("id: "):
                        seq = int(line.rsplit("-", 1)[1])
                    elif line.startswith("event: "):
                        name = line[7:]
                    elif not line and name:
                        record(sse=lesson_id, seq=seq, event=name, t=time.time())
                        if name in ("lesson_complete", "error"):
                            completed = name == "lesson_complete"
                            break
                        seq, name = 0, ""
        except Exception as e:  # a dropped stream is a result to count, not a crash
            error = f"{type(e).__name__}: {e}"[:200]
        record(
            route=STREAM + " (to the end)",
            ms=(time.time() - started) * 1000,
            # A stream that ended without lesson_complete is a failure whatever its status.
            status=status if completed or status >= 400 else 599,
            t=time.time(),
            error=error if not completed else None,
        )
        return completed
