"""Hostile input over every route: never a 5xx, always the envelope (issue 15).

The fixed cases are the probe's own (deep nesting, NUL and bidi characters, invalid UTF-8,
oversized and mistyped bodies, foreign origins, doubled headers, forged cookies and cursors,
odd paths and methods); hypothesis then throws generated JSON bodies, headers and cursors at
every route. In the suite the generated part is bounded (FUZZ_EXAMPLES, default 25 per test);
`make fuzz` runs it with many more.

Plain pytest over httpx against a real server and database (a schema-driven fuzzer is
another engineer's; this one knows the probe's cases).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.errors import ErrorCode
from tests.conftest import make_settings
from tests.live import serve_app
from tests.test_lessons_flow import PLAN_BODY
from web.errors import STATUS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
LIMIT = 4096
CODES = {str(c) for c in ErrorCode}


class Target:
    """A running server, one session in it, and a lesson of that session."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(base_url=base, timeout=30)
        assert self.client.post("/v1/session").status_code == 201
        self.cookie = self.client.cookies["ot_session"]
        r = self.client.post("/v1/plan", json=PLAN_BODY, headers={"Idempotency-Key": "setup"})
        assert r.status_code == 200, r.text
        self.lesson_id = str(r.json()["lesson_id"])
        self.seen = 0

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 10)
        headers = kwargs.pop("headers", None)
        c = self.client
        c.cookies = httpx.Cookies({"ot_session": self.cookie})  # whatever the last answer set
        if "stream" in path and method == "GET":
            # Read only the head of a stream: its answer is decided before the body.
            with c.stream(method, path, headers=headers, **kwargs) as r:
                if r.status_code == 200:
                    assert r.headers["cache-control"] == "no-store"
                    self.seen += 1
                    return r
                r.read()
                return self.check(r)
        return self.check(c.request(method, path, headers=headers, **kwargs))

    def check(self, r: httpx.Response) -> httpx.Response:
        self.seen += 1
        assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text)
        if r.status_code == 503:  # only the stream cap may say so here, never a crash
            assert r.json()["code"] == "rate_limited", r.text
        if r.status_code >= 400:
            assert_envelope(r)
        assert "Traceback" not in r.text
        assert "location" not in r.headers
        return r


def assert_envelope(r: httpx.Response) -> None:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["ok"] is False, body
    assert body["code"] in CODES, body
    assert r.status_code == STATUS[ErrorCode(body["code"])], body
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["recoverable"], bool)
    assert body["trace_id"] == r.headers["x-trace-id"]


@pytest.fixture(scope="module")
def target(
    pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    from eventstore.database import create_database, drop_database

    name = f"ot_fuzz_{os.getpid()}"
    url = create_database(pg_admin_url, name, template=template_db)
    settings = make_settings(
        max_body_bytes=LIMIT, limit_plan_anon_per_hour=10_000, offline_pace_ms=0
    )
    try:
        with serve_app(settings, url) as base:
            t = Target(base)
            yield t
            t.client.close()
    finally:
        drop_database(pg_admin_url, name)


def routes(t: Target) -> list[tuple[str, str]]:
    lesson = f"/v1/lesson/{t.lesson_id}"
    return [
        ("POST", "/v1/session"),
        ("POST", "/v1/plan"),
        ("GET", lesson),
        ("GET", f"{lesson}/stream"),
        ("POST", f"{lesson}/abandon"),
        ("GET", "/v1/readyz"),
    ]


def deep(depth: int) -> bytes:
    return b'{"topic":' + b"[" * depth + b"]" * depth + b"}"


JSON = {"Content-Type": "application/json"}
BODIES: list[tuple[bytes, dict[str, str]]] = [
    (deep(40), JSON),
    (deep(254), JSON),
    (deep(600), JSON),
    (deep(1023), JSON),
    (deep(1030), JSON),
    (b'{"client_meta": {"k\\u0000": "v"}}', JSON),
    (b'{"client_meta": {"k": "v\\u0000"}}', JSON),
    (b'{"subject": "physics", "topic": "Waves\\u202e\\u2066", "intent": {}}', JSON),
    (b'{"subject": "physics", "topic": "Waves\\u0085"}', JSON),
    (b'{"topic": "\xff\xfe"}', JSON),
    (b'{"topic": "\xed\xa0\x80"}', JSON),  # a UTF-8-encoded surrogate
    (b'{"topic": "\\ud800"}', JSON),  # a lone surrogate escape
    (b"[1, 2, 3]", JSON),
    (b'"just a string"', JSON),
    (b"null", JSON),
    (b"NaN", JSON),
    (b'{"n": 1e400}', JSON),
    (b'{"n": 123456789012345678901234567890}', JSON),
    (b'{"a": 1, "a": 2}', JSON),
    (b"{", JSON),
    (b"", JSON),
    (b" " * (LIMIT + 1), JSON),
    (b'{"x": "' + b"y" * (LIMIT * 4) + b'"}', JSON),
    (b"a=b", {"Content-Type": "application/x-www-form-urlencoded"}),
    (b"{}", {"Content-Type": "text/plain"}),
    (b"--x--", {"Content-Type": "multipart/form-data; boundary=x"}),
    (b"{}", {"Content-Type": "application/json; charset=latin-1"}),
    (b"{}", {}),
]


@pytest.mark.parametrize(("body", "headers"), BODIES)
def test_hostile_bodies_on_every_route(
    target: Target, body: bytes, headers: dict[str, str]
) -> None:
    for method, path in routes(target):
        target.send(method, path, content=body, headers={**headers, **key()})


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


HEADER_SETS: list[list[tuple[str, str]]] = [
    [("Origin", "https://evil.example")],
    [("Origin", "null")],
    [("Origin", "https://evil.example"), ("Origin", "http://127.0.0.1")],
    [("Sec-Fetch-Site", "cross-site")],
    [("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    [("Idempotency-Key", "x" * 300)],
    [("Idempotency-Key", "naïve")],
    [("Idempotency-Key", "")],
    [("Cookie", "ot_session=forged")],
    [("Cookie", "ot_session=a; ot_session=b")],
    [("Cookie", "ot_session=" + "A" * 5000)],
    [("Last-Event-ID", "x")],
    [("Last-Event-ID", "01HZX-evt-00001")],
    [("Last-Event-ID", "LESSON-evt-\u0661")],
    [("Last-Event-ID", "LESSON-evt-99999999999999")],
    [("Last-Event-ID", "LESSON-evt-999999999")],
    [("Content-Type", "application/json"), ("Content-Type", "text/plain")],
    [("Host", "evil.example")],
]


@pytest.mark.parametrize("headers", HEADER_SETS)
def test_hostile_headers_on_every_route(target: Target, headers: list[tuple[str, str]]) -> None:
    # Header values as UTF-8 bytes: a client may send any bytes, not only ASCII.
    resolved = [(k, v.replace("LESSON", target.lesson_id).encode()) for k, v in headers]
    for method, path in routes(target):
        body = {"content": b"{}"} if method == "POST" else {}
        has_type = any(k.lower() == "content-type" for k, _ in resolved)
        extra = [] if has_type or method != "POST" else [("Content-Type", b"application/json")]
        target.send(method, path, headers=[*resolved, *extra], **body)


PATHS = [
    "/v1/plan/",
    "/v1/healthz/",
    "/v1//plan",
    "/v1/lesson/../session",
    "/v1/lesson/%2e%2e/session",
    "/v1/lesson/a%2Fb/stream",
    "/v1/lesson/" + "x" * 5000,
    "/v1/lesson/\u202e/stream",
    "/v1/lesson/LESSON/stream?last_event_id=LESSON-evt-%D9%A1",
    "/v1/lesson/LESSON/stream?last_event_id=" + "9" * 100,
    "/v1/lesson/LESSON/stream?last_event_id=%00",
    "/v1/lesson/01HZXAAAAAAAAAAAAAAAAAAAAA",
    "/v1/nope",
    "/",
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_odd_paths_and_methods(target: Target, path: str, method: str) -> None:
    target.send(method, path.replace("LESSON", target.lesson_id), headers=key())


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
plan_like = st.fixed_dictionaries(
    {},
    optional={
        "subject": st.text(max_size=50) | json_values,
        "topic": st.text(max_size=300) | json_values,
        "intent": st.dictionaries(
            st.sampled_from(["why", "level", "time", "style", "free_text", "advanced", "x"]),
            json_values,
        ),
        "client_meta": json_values,
    },
)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=plan_like | json_values)
def test_generated_json_bodies(target: Target, body: Any) -> None:
    for method, path in routes(target):
        if method == "POST":
            target.send(method, path, json=body, headers=key())


@FUZZ
@given(
    cursor=st.text(max_size=40),
    # What HTTP/1.1 can carry in a header value (no surrounding whitespace).
    header=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(
        str.strip
    ),
)
def test_generated_cursors_and_keys(target: Target, cursor: str, header: str) -> None:
    path = f"/v1/lesson/{target.lesson_id}/stream"
    target.send("GET", path, params={"last_event_id": cursor})
    target.send("GET", path, headers={"Last-Event-ID": header})
    target.send(
        "POST", "/v1/plan", json=PLAN_BODY | {"topic": cursor}, headers={"Idempotency-Key": header}
    )


def test_a_non_numeric_content_length_is_refused_by_uvicorn_before_the_app(
    target: Target,
) -> None:
    """Documented exception (docs/guardrails.md): uvicorn's HTTP parser answers a malformed
    request line or Content-Length itself, in plain text, before any app code runs. Not a
    5xx, and nothing reaches the service."""
    host, port = target.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/session HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n"
            b"Content-Type: application/json\r\n\r\n{}"
        )
        head = sock.recv(4096).split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 400 Bad Request"
