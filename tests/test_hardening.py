"""Issue 15's findings from a fault and bad-input probe, one test each (and issue 9's key bug).

Each test sends what the probe sent to a real server on a real database, and fails on the
behaviour the probe found: a 500, a key spent by a refused request, a cross-site write, a
redirect built from Host, a cache-able stream, a planted cookie, a non-ASCII cursor.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import structlog

from commands.errors import InvalidInput
from commands.sessions import client_meta_json
from eventstore.logconfig import STDLIB_HANDLER, configure_logging
from tests.conftest import make_settings
from tests.live import serve, serve_app
from tests.test_lessons_api import body_with
from tests.test_lessons_flow import PLAN_BODY
from web.app import create_app
from web.errors import STATUS

EVIL = "https://evil.example"


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    settings = make_settings(offline_pace_ms=0, beat_partial_ms=0, sse_heartbeat_s=1.0)
    with serve_app(settings, db_url) as base_url:
        yield base_url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as c:
        assert c.post("/v1/session").status_code == 201
        yield c


def envelope(r: httpx.Response, code: str, field: str | None = None) -> dict[str, Any]:
    from commands.errors import ErrorCode

    assert r.status_code == STATUS[ErrorCode(code)], r.text
    body: dict[str, Any] = r.json()
    assert body["ok"] is False
    assert body["code"] == code, body
    assert body["trace_id"] == r.headers["x-trace-id"]
    if field is not None:
        assert body["field"] == field, body
    return body


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def stored_keys(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()
    assert row is not None
    return int(row[0])


def lessons(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE type = 'lesson.created'").fetchone()
    assert row is not None
    return int(row[0])


# ---- 1. cheap requests that answered 500 -------------------------------------------------


@pytest.mark.parametrize("depth", [254, 300, 1023])
def test_deep_json_on_a_keyed_plan_is_invalid_input(
    client: httpx.Client, db_url: str, depth: int
) -> None:
    raw = b'{"subject":"physics","topic":' + b"[" * depth + b"]" * depth + b"}"
    r = client.post("/v1/plan", content=raw, headers={**key(), "Content-Type": "application/json"})
    body = envelope(r, "invalid_input")
    assert body["field"].startswith("topic")
    assert "nested deeper" in body["message"]
    assert stored_keys(db_url) == 0


@pytest.mark.parametrize("depth", [40, 300])
def test_deep_client_meta_is_invalid_input(server: str, depth: int) -> None:
    raw = orjson.dumps({"client_meta": nested(depth)}) if depth < 250 else None
    if raw is None:
        raw = b'{"client_meta":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    r = httpx.post(
        f"{server}/v1/session", content=raw, headers={"Content-Type": "application/json"}
    )
    body = envelope(r, "invalid_input")
    assert body["field"].startswith("client_meta")


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({"ua\u0000": "x"}, "client_meta"),
        ({"ua": "Mozilla\u0000"}, "client_meta.ua"),
        ({"screens": [{"w": "1\u0000"}]}, "client_meta.screens[0].w"),
    ],
)
def test_nul_in_client_meta_is_invalid_input_naming_the_field(
    server: str, db_url: str, meta: dict[str, Any], field: str
) -> None:
    r = httpx.post(f"{server}/v1/session", json={"client_meta": meta})
    envelope(r, "invalid_input", field)
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM sessions").fetchone()
    assert row == (0,)


def test_client_meta_is_checked_without_http() -> None:
    with pytest.raises(InvalidInput) as nul:
        client_meta_json({"k": ["ok", "bad\u0000"]})
    assert nul.value.field == "client_meta.k[1]"
    with pytest.raises(InvalidInput) as deep:
        client_meta_json(nested(300))
    assert deep.value.field.startswith("client_meta")
    assert client_meta_json({"ua": "Mozilla/5.0"}) == '{"ua":"Mozilla/5.0"}'


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u0085", "\u009b", "\u0000", "\u001b"])
def test_bidi_and_control_characters_are_refused_in_the_topic(
    client: httpx.Client, db_url: str, char: str
) -> None:
    r = client.post("/v1/plan", json=body_with("topic", f"Waves{char}evil"), headers=key())
    body = envelope(r, "invalid_input", "topic")
    assert f"U+{ord(char):04X}" in body["message"]
    assert lessons(db_url) == 0


def test_a_storage_error_logs_its_cause_with_the_trace_id(server: str, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Any driver error other than an outage: the sessions table is briefly missing.
        conn.execute("ALTER TABLE sessions RENAME TO sessions_moved")
    try:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            r = httpx.post(f"{server}/v1/session")
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE sessions_moved RENAME TO sessions")
    body = envelope(r, "internal")
    causes = [
        line
        for line in logs
        if line.get("trace_id") == body["trace_id"]
        and line["log_level"] == "error"
        and line["event"] != "request"
    ]
    assert causes, logs
    assert causes[0].get("exc_info") is not None


# ---- 2 (part) and issue 9: which requests spend a key ------------------------------------


def test_a_key_used_on_an_unknown_route_works_once_the_route_exists(db_url: str) -> None:
    settings = make_settings(offline_pace_ms=0)
    older = create_app(settings, db_url)
    older.router.routes = [r for r in older.router.routes if getattr(r, "path", "") != "/v1/plan"]
    same_key = key()
    with serve(older) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.post("/v1/session").status_code == 201
        cookies = c.cookies
        envelope(c.post("/v1/plan", json=PLAN_BODY, headers=same_key), "not_found")
    assert stored_keys(db_url) == 0
    with (
        serve_app(settings, db_url) as base,
        httpx.Client(base_url=base, timeout=30, cookies=cookies) as c,
    ):
        r = c.post("/v1/plan", json=PLAN_BODY, headers=same_key)
    assert r.status_code == 200, r.text
    assert r.json()["lesson_id"]


def test_a_request_refused_by_validation_stores_no_key(client: httpx.Client, db_url: str) -> None:
    same_key = key()
    wrong = client.post("/v1/plan", json=body_with("subject", "Physics!"), headers=same_key)
    envelope(wrong, "invalid_input", "subject")
    assert stored_keys(db_url) == 0
    corrected = client.post("/v1/plan", json=PLAN_BODY, headers=same_key)
    assert corrected.status_code == 200, corrected.text
    assert stored_keys(db_url) == 1


def test_a_repeated_idempotency_key_header_is_refused(client: httpx.Client, db_url: str) -> None:
    headers = [("Idempotency-Key", "one"), ("Idempotency-Key", "two")]
    r = client.post("/v1/plan", json=PLAN_BODY, headers=headers)
    envelope(r, "invalid_input", "Idempotency-Key")
    assert lessons(db_url) == 0


# ---- 5. cross-site requests ---------------------------------------------------------------


@pytest.fixture
def lesson_id(client: httpx.Client) -> str:
    r = client.post("/v1/plan", json=PLAN_BODY, headers=key())
    assert r.status_code == 200, r.text
    return str(r.json()["lesson_id"])


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ({"Content-Type": "text/plain"}, b"{}"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=b"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--"),
        ({"Content-Type": "text/plain"}, b""),
        ({}, b"{}"),
    ],
)
def test_abandon_takes_only_json(
    client: httpx.Client, lesson_id: str, headers: dict[str, str], content: bytes
) -> None:
    r = client.post(f"/v1/lesson/{lesson_id}/abandon", content=content, headers=headers)
    envelope(r, "unsupported_media_type")
    assert client.get(f"/v1/lesson/{lesson_id}").json()["status"] != "abandoned"


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_a_foreign_origin_may_not_write(client: httpx.Client, lesson_id: str, origin: str) -> None:
    r = client.post(
        f"/v1/lesson/{lesson_id}/abandon",
        json={},
        headers={"Origin": origin, **key()},
    )
    envelope(r, "forbidden_origin")
    assert client.get(f"/v1/lesson/{lesson_id}").json()["status"] != "abandoned"


def test_the_products_own_page_can_abandon_with_no_body(
    client: httpx.Client, lesson_id: str, server: str
) -> None:
    r = client.post(f"/v1/lesson/{lesson_id}/abandon", headers={"Origin": server})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "abandoned"


def test_no_origin_and_no_body_is_a_same_origin_abandon(
    client: httpx.Client, lesson_id: str
) -> None:
    r = client.post(f"/v1/lesson/{lesson_id}/abandon")
    assert r.status_code == 200, r.text


def test_a_configured_origin_may_write(db_url: str) -> None:
    settings = make_settings(allowed_origins=("https://app.example",))
    with serve_app(settings, db_url) as base:
        allowed = httpx.post(f"{base}/v1/session", headers={"Origin": "https://app.example"})
        other = httpx.post(f"{base}/v1/session", headers={"Origin": EVIL})
    assert allowed.status_code == 201, allowed.text
    envelope(other, "forbidden_origin")


def test_allowed_origins_are_read_from_the_environment() -> None:
    from eventstore.settings import Settings

    env = {"OMNITUTOR_ALLOWED_ORIGINS": "https://App.example/, http://localhost:5173"}
    assert Settings.from_env(env).allowed_origins == (
        "https://app.example",
        "http://localhost:5173",
    )
    with pytest.raises(SystemExit, match="not an origin"):
        Settings.from_env({"OMNITUTOR_ALLOWED_ORIGINS": "app.example"})


# ---- 6. smaller ---------------------------------------------------------------------------


def test_the_stream_is_not_stored_by_any_cache(client: httpx.Client, lesson_id: str) -> None:
    with client.stream("GET", f"/v1/lesson/{lesson_id}/stream") as r:
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/plan/"), ("GET", "/v1/healthz/"), ("POST", "/v1/session/")]
)
def test_a_trailing_slash_is_the_404_envelope_not_a_redirect(
    server: str, method: str, path: str
) -> None:
    r = httpx.request(
        method, f"{server}{path}", headers={"Host": "evil.example"}, follow_redirects=False
    )
    envelope(r, "not_found")
    assert "location" not in r.headers


def test_two_session_cookies_are_refused(client: httpx.Client, lesson_id: str) -> None:
    token = client.cookies["ot_session"]
    for cookie in (f"ot_session=planted; ot_session={token}", f"ot_session={token}; ot_session=x"):
        r = httpx.get(f"{client.base_url}/v1/lesson/{lesson_id}", headers={"Cookie": cookie})
        envelope(r, "invalid_input", "Cookie")


@pytest.mark.parametrize("digits", ["\u0661", "\uff11", "\u0967"])
def test_non_ascii_digits_in_last_event_id_are_refused(
    client: httpx.Client, lesson_id: str, digits: str
) -> None:
    cursor = f"{lesson_id}-evt-0000{digits}"
    r = client.get(f"/v1/lesson/{lesson_id}/stream", params={"last_event_id": cursor})
    envelope(r, "invalid_input", "last_event_id")


def test_stdlib_loggers_write_the_same_json_lines() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
        logging.getLogger("psycopg.pool").warning("error connecting in %r: %s", "omnitutor", "x")
        logging.getLogger("psycopg.pool").info("connection given by %r", "omnitutor")
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == STDLIB_HANDLER]:
            root.removeHandler(handler)
        structlog.reset_defaults()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("uvicorn.error", "warn"),
        ("psycopg.pool", "warn"),
    ]
    assert lines[1]["msg"] == "error connecting in 'omnitutor': x"
    assert all("ts" in line for line in lines)
