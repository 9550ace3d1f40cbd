"""Helpers for the accounts tests: a running app with generous plan limits, students, mail."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx

from commands.mailer import read_outbox
from tests.conditions import wait_for
from tests.conftest import make_settings
from tests.live import serve_app

T = TypeVar("T")


@contextmanager
def running(db_url: str, home: Path, **overrides: Any) -> Iterator[str]:
    base = {
        "home": home,
        "offline_pace_ms": 0,
        "limit_plan_anon_per_hour": 1000,
        "limit_plan_user_per_hour": 1000,
        "max_generations": 0,  # no beat generation: these tests are about ownership
    }
    with serve_app(make_settings(**{**base, **overrides}), db_url) as url:
        yield url


@contextmanager
def student(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.post("/v1/session").status_code == 201
        yield client


def plan(client: httpx.Client, topic: str = "Hooke's law & SHM", **intent: Any) -> str:
    body = {"subject": "physics", "topic": topic, "intent": {"why": "homework", **intent}}
    r = client.post("/v1/plan", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 200, r.text
    return str(r.json()["lesson_id"])


def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


def latest_link(home: Path, to: str) -> str:
    for message in read_outbox(home / "outbox", limit=50):
        if message["to"] == to:
            return str(message["link"])
    raise AssertionError(f"no mail to {to} in the outbox")


def eventually(read: Callable[[], T], ok: Callable[[T], bool], deadline_s: float = 10.0) -> T:
    """Read until `ok` holds (the projection catches up within milliseconds), with a bound."""
    seen: list[T] = []

    def holds() -> bool:
        seen.append(read())
        return ok(seen[-1])

    wait_for(holds, deadline_s, what="the read model")
    return seen[-1]


def library(client: httpx.Client, **params: Any) -> list[str]:
    r = client.get("/v1/lessons", params=params)
    assert r.status_code == 200, r.text
    return [lesson["lesson_id"] for lesson in r.json()["lessons"]]
