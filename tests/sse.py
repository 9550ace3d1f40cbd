"""A small SSE client for tests: real HTTP, every field kept (id, event, data, retry)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Sse:
    event: str
    data: Any
    id: str | None
    retry: int | None = None


def parse(lines: Iterator[str]) -> Iterator[Sse]:
    event, id_, retry = "message", None, None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data or retry is not None:
                payload = json.loads("\n".join(data)) if data else None
                yield Sse(event if data else "retry", payload, id_, retry)
            event, data, id_, retry = "message", [], None, None
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            id_ = value
        elif name == "retry":
            retry = int(value)


@dataclass
class StreamResult:
    status: int
    headers: httpx.Headers
    events: list[Sse]
    closed_by_server: bool


def read_stream(
    client: httpx.Client,
    lesson_id: str,
    last_event_id: str | None = None,
    *,
    stop: Callable[[list[Sse]], bool] | None = None,
    deadline_s: float = 60.0,
) -> StreamResult:
    """Read a lesson's stream until the server closes it or `stop(events so far)` is true."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Sse] = []
    give_up = time.monotonic() + deadline_s
    with client.stream(
        "GET", f"/v1/lesson/{lesson_id}/stream", headers=headers, timeout=deadline_s
    ) as r:
        if r.status_code != 200:
            r.read()
            return StreamResult(r.status_code, r.headers, [], True)
        for sse in parse(r.iter_lines()):
            events.append(sse)
            if stop is not None and stop(events):
                return StreamResult(r.status_code, r.headers, events, False)
            if time.monotonic() > give_up:
                raise TimeoutError(f"stream still open after {deadline_s}s: {events[-3:]}")
        return StreamResult(r.status_code, r.headers, events, True)
