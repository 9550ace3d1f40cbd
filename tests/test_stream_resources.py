"""The SSE stream's resources: a reader that leaves frees them at once; one that stops
reading is dropped after the send timeout, and never holds up the other readers."""

from __future__ import annotations

import asyncio
import socket
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from commands.bootstrap import Deps
from eventstore.database import open_pool
from eventstore.events import BeatPartial, BeatStarted
from eventstore.store import EventMeta, EventStore, NewEvent
from tests.conditions import seconds_until
from tests.conftest import make_settings
from tests.live import serve_with_deps, student_client
from tests.sse import parse
from tests.test_lessons_flow import PLAN_BODY

pytestmark = pytest.mark.slow


def app_server(db_url: str, **overrides: Any) -> AbstractContextManager[tuple[str, Deps]]:
    return serve_with_deps(make_settings(**overrides), db_url)


def new_lesson(client: httpx.Client) -> str:
    assert client.post("/v1/session").status_code == 201
    r = client.post("/v1/plan", json=PLAN_BODY)
    assert r.status_code == 200, r.text
    lesson_id: str = r.json()["lesson_id"]
    return lesson_id


def test_a_reader_that_disconnects_frees_its_subscription_at_once(db_url: str) -> None:
    # A slow offline tutor keeps the lesson streaming for the whole test.
    server = app_server(db_url, offline_pace_ms=200, sse_heartbeat_s=30)
    with server as (base, svc), student_client(base, timeout=30) as client:
        lesson_id = new_lesson(client)
        with client.stream("GET", f"/v1/lesson/{lesson_id}/stream") as stream:
            events = parse(stream.iter_lines())
            assert next(events).event == "retry"
            assert next(events).event == "plan_ready"
            seconds_until(lambda: svc.hub.subscriber_count == 1, 5, "subscribed")
        freed_in = seconds_until(lambda: svc.hub.subscriber_count == 0, 2, "freed")
    assert freed_in < 2


async def append_backlog(db_url: str, lesson_id: str, partials: int) -> None:
    """A beat with a long run of partials: more than the socket buffers can hold."""
    async with open_pool(db_url, max_size=2) as pool:
        store = EventStore(pool)
        head = await store.lesson_head(lesson_id)
        meta = EventMeta(trace_id="req_test")
        events = [NewEvent.of(BeatStarted(2, "beat-2", "concept", "Two", "offline"), meta)]
        events += [NewEvent.of(BeatPartial(2, "x" * 1000), meta) for _ in range(partials)]
        await store.append(lesson_id, events, expected_seq=head)


def stalled_reader(base: str, path: str, cookie: str) -> socket.socket:
    """A client that sends its request, then never reads: its receive window stays tiny."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: ot_session={cookie}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def test_a_reader_that_stops_reading_is_dropped_without_slowing_the_others(
    db_url: str,
) -> None:
    partials = 3000  # ~3 MB of beat_partial frames
    settings = {"max_generations": 0, "sse_send_timeout_s": 0.5, "sse_heartbeat_s": 30}
    with app_server(db_url, **settings) as (base, svc), student_client(base, timeout=30) as client:
        lesson_id = new_lesson(client)
        path = f"/v1/lesson/{lesson_id}/stream"
        with client.stream("GET", path) as opened:  # locks the plan; nothing generates
            assert opened.status_code == 200
        asyncio.run(append_backlog(db_url, lesson_id, partials))
        stalled = stalled_reader(base, path, client.cookies["ot_session"])
        try:
            seconds_until(lambda: svc.hub.subscriber_count == 1, 5, "stalled reader in")
            # Another reader gets the whole backlog while the stalled one is stuck.
            with client.stream("GET", path) as stream:
                seen = 0
                for event in parse(stream.iter_lines()):
                    seen += event.event == "beat_partial"
                    if seen == partials:
                        break
            # The stalled reader is dropped by the server, its socket still open.
            seconds_until(lambda: svc.hub.subscriber_count == 0, 5, "stalled reader dropped")
        finally:
            stalled.close()
    assert seen == partials
