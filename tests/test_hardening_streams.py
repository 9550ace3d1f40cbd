"""Issue 15 item 3: a stalled reader's connection is reset, and open streams are capped."""

from __future__ import annotations

import asyncio
import socket
from contextlib import ExitStack

import pytest

from tests.conditions import seconds_until
from tests.live import student_client
from tests.test_stream_resources import (
    app_server,
    append_backlog,
    new_lesson,
    stalled_reader,
)

pytestmark = pytest.mark.slow


def reset_by_server(sock: socket.socket) -> bool:
    """Read what is buffered; True once the server reset the connection, False on a clean
    end of stream (a graceful close), None-ish (False) while data still flows."""
    try:
        while chunk := sock.recv(1 << 16):
            del chunk
    except BlockingIOError:
        return False  # still open, nothing more right now
    except ConnectionResetError:
        return True
    raise AssertionError("the server closed gracefully: a stalled reader kept its socket")


def test_a_dropped_stalled_reader_is_reset_not_closed_gracefully(db_url: str) -> None:
    settings = {"max_generations": 0, "sse_send_timeout_s": 0.5, "sse_heartbeat_s": 30}
    with app_server(db_url, **settings) as (base, svc), student_client(base) as client:
        lesson_id = new_lesson(client)
        path = f"/v1/lesson/{lesson_id}/stream"
        with client.stream("GET", path) as opened:  # locks the plan; nothing generates
            assert opened.status_code == 200
        asyncio.run(append_backlog(db_url, lesson_id, 3000))
        stalled = stalled_reader(base, path, client.cookies["ot_session"])
        try:
            seconds_until(lambda: svc.hub.subscriber_count == 1, 5, "stalled reader in")
            seconds_until(lambda: svc.hub.subscriber_count == 0, 5, "stalled reader dropped")
            # Only now does the client read: the server has reset the connection, so the
            # read fails instead of draining megabytes the server kept buffered for it.
            stalled.setblocking(False)
            seconds_until(lambda: reset_by_server(stalled), 5, "connection reset")
        finally:
            stalled.close()


def test_open_streams_are_capped_per_session(db_url: str) -> None:
    settings = {"sse_max_per_session": 2, "sse_heartbeat_s": 1, "offline_pace_ms": 50}
    with (
        app_server(db_url, **settings) as (base, _),
        student_client(base, timeout=30) as client,
        ExitStack() as streams,
    ):
        lesson_id = new_lesson(client)
        path = f"/v1/lesson/{lesson_id}/stream"
        for _ in range(2):
            assert streams.enter_context(client.stream("GET", path)).status_code == 200
        refused = client.get(path)
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["code"] == "rate_limited"
        assert body["recoverable"] is True
        assert refused.headers["retry-after"] == "5"
        streams.close()  # both readers leave: their slots are freed as the server sees it

        def opens() -> bool:
            with client.stream("GET", path) as again:
                return again.status_code == 200

        seconds_until(opens, 5, "a slot freed")


def test_open_streams_are_capped_per_client_address(db_url: str) -> None:
    settings = {"sse_max_per_client": 2, "sse_heartbeat_s": 1, "offline_pace_ms": 50}
    with app_server(db_url, **settings) as (base, _), ExitStack() as stack:
        clients = [stack.enter_context(student_client(base, timeout=30)) for _ in range(3)]
        paths = [f"/v1/lesson/{new_lesson(c)}/stream" for c in clients]
        for c, path in zip(clients[:2], paths[:2], strict=True):
            assert stack.enter_context(c.stream("GET", path)).status_code == 200
        refused = clients[2].get(paths[2])
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "rate_limited"
