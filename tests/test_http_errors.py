"""Hostile and malformed input: always the envelope, a precise message, nothing written."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.conftest import make_settings
from tests.live import serve_app

LIMIT = 1024


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    with serve_app(make_settings(max_body_bytes=LIMIT), db_url) as base_url:
        yield base_url


def rows(db_url: str) -> tuple[int, int, int]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM sessions), "
            # Every non-2xx answer appends its `error` event: that is the one row expected.
            "(SELECT count(*) FROM events WHERE type <> 'error')"
        ).fetchone()
    assert row is not None
    return row


def assert_envelope(r: httpx.Response, status: int, code: str, says: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["ok"] is False
    assert body["code"] == code
    assert isinstance(body["recoverable"], bool)
    assert body["trace_id"].startswith("req_")
    assert body["trace_id"] == r.headers["x-trace-id"]
    assert "Traceback" not in r.text
    if says:
        assert says in body["message"], body["message"]


def chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * 256
        sent += 256


CASES = [
    pytest.param("GET", "/v1/nowhere", {}, None, 404, "not_found", "no route", id="unknown-route"),
    pytest.param(
        "GET",
        "/v1/session",
        {},
        None,
        405,
        "method_not_allowed",
        "GET is not allowed",
        id="wrong-method",
    ),
    pytest.param(
        "DELETE",
        "/v1/healthz",
        {},
        None,
        405,
        "method_not_allowed",
        None,
        id="wrong-method-healthz",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "application/json"},
        b"{nope",
        400,
        "invalid_input",
        "not valid JSON",
        id="malformed-json",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "application/json"},
        b"[1, 2]",
        400,
        "invalid_input",
        "must be a JSON object",
        id="array-body",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "application/json"},
        b'"text"',
        400,
        "invalid_input",
        "must be a JSON object",
        id="string-body",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "application/json"},
        b'{"a": "\xff"}',
        400,
        "invalid_input",
        "UTF-8",
        id="invalid-utf8",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "text/plain"},
        b"{}",
        415,
        "unsupported_media_type",
        "text/plain",
        id="text-plain",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "application/x-www-form-urlencoded"},
        b"a=1",
        415,
        "unsupported_media_type",
        None,
        id="form",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "multipart/form-data; boundary=x"},
        b"--x--",
        415,
        "unsupported_media_type",
        None,
        id="multipart",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "application/json"},
        b'{"client_meta": 3}',
        400,
        "invalid_input",
        "client_meta",
        id="bad-field",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "application/json"},
        b'{"surprise": 1}',
        400,
        "invalid_input",
        "surprise: unknown field",
        id="unknown-field",
    ),
    pytest.param(
        "POST",
        "/v1/session",
        {"content-type": "application/json"},
        b'{"client_meta": {"x": "' + b"y" * 2000 + b'"}}',
        413,
        "payload_too_large",
        "over 1024 bytes",
        id="declared-too-large",
    ),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code", "says"), CASES)
def test_bad_requests_get_the_envelope_and_change_nothing(
    server: str,
    db_url: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    code: str,
    says: str | None,
) -> None:
    before = rows(db_url)
    r = httpx.request(method, server + path, headers=headers, content=body)
    assert_envelope(r, status, code, says)
    assert rows(db_url) == before


def test_absurdly_deep_nesting_is_invalid_input(server: str, db_url: str) -> None:
    body = b"[" * 5000 + b"]" * 5000  # 10 KB, so under a raised limit it reaches the parser
    with serve_app(make_settings(max_body_bytes=64 * 1024), db_url) as base:
        r = httpx.post(
            base + "/v1/session", content=body, headers={"content-type": "application/json"}
        )
    assert_envelope(r, 400, "invalid_input", "depth")


def test_chunked_body_over_the_limit_is_cut_off_while_reading(server: str, db_url: str) -> None:
    before = rows(db_url)
    # No Content-Length: the limit must be enforced on the stream itself.
    r = httpx.post(
        server + "/v1/session",
        content=chunks(50 * 1024 * 1024),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_envelope(r, 413, "payload_too_large")
    assert rows(db_url) == before


def test_security_headers_on_success_and_error(server: str) -> None:
    for r in (httpx.get(server + "/v1/healthz"), httpx.get(server + "/v1/nowhere")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-trace-id"].startswith("req_")


def test_method_not_allowed_names_the_allowed_methods(server: str) -> None:
    r = httpx.get(server + "/v1/session")
    assert "POST" in r.headers["allow"]
