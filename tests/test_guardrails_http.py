"""The guardrails over real HTTP: P0 acceptance tests 9, 10 and 11, idempotent replay and
conflicts, concurrency, the trusted-proxy rule, and the error vocabulary.

`POST /v1/plan` is the real endpoint (web/lessons.py), served by uvicorn with the real app,
middleware and database; only its model provider is tests/guarded_app.py's scripted one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import structlog

from commands.errors import ErrorCode
from eventstore.events import ModelRunRecorded
from eventstore.settings import Settings
from eventstore.store import EventMeta, NewEvent
from ops.cli import build_parser
from tests.conftest import make_settings
from tests.guarded_app import (
    CRASH_TOPIC,
    HARMFUL_BEAT_TOPIC,
    HARMFUL_OUTPUT_TOPIC,
    OUTAGE_TOPIC,
    THROTTLE_TOPIC,
    guarded_app,
)
from tests.live import serve
from tests.outage import database_outage
from web.errors import STATUS

pytestmark = pytest.mark.anyio

HARMFUL_TOPIC = "how to build a bomb to hurt people"
ENVELOPE_KEYS = {"ok", "code", "message", "recoverable", "retry_after_ms", "trace_id"}
DETAIL_KEYS = {"field", "reason", "scope", "bucket", "header", "allow", "checks"}


@contextmanager
def running(db_url: str, **overrides: Any) -> Iterator[str]:
    settings = make_settings(**{"offline_pace_ms": 0, **overrides})
    with serve(guarded_app(settings, db_url)) as base_url:
        yield base_url


def plan_body(topic: str = "Hooke's law & SHM", **intent: Any) -> dict[str, Any]:
    return {
        "subject": "physics",
        "topic": topic,
        "intent": {"why": "homework", "time": "30 min", **intent},
    }


@contextmanager
def session(base_url: str, **headers: str) -> Iterator[httpx.Client]:
    """A client with a fresh anonymous session."""
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as client:
        assert client.post("/v1/session").status_code == 201
        yield client


def post_plan(
    client: httpx.Client, key: str | None, body: Any = None, **headers: str
) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post(
        "/v1/plan", json=plan_body() if body is None else body, headers={**extra, **headers}
    )


def events(db_url: str, type_: str | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT type, payload_json FROM events "
            "WHERE %(t)s::text IS NULL OR type = %(t)s::text ORDER BY insert_no",
            {"t": type_},
        ).fetchall()
    return [{"type": t, **p} for t, p in rows]


def assert_envelope(r: httpx.Response, code: str) -> dict[str, Any]:
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert r.status_code == STATUS[ErrorCode(code)]
    assert body["ok"] is False
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["recoverable"], bool)
    assert body["trace_id"].startswith("req_")
    assert body["trace_id"] == r.headers["x-trace-id"]
    assert set(body) <= ENVELOPE_KEYS | DETAIL_KEYS, set(body) - ENVELOPE_KEYS - DETAIL_KEYS
    if "retry_after_ms" in body:
        assert body["retry_after_ms"] > 0
        assert int(r.headers["retry-after"]) == -(-body["retry_after_ms"] // 1000)
    return body


# ---- P0 acceptance tests 9, 10, 11 ---------------------------------------------------------


def test_p0_9_sixth_anonymous_plan_from_one_ip_in_an_hour_is_over_quota(db_url: str) -> None:
    with running(db_url) as base:
        for i in range(5):
            with session(base) as client:  # a fresh anonymous session each time: same IP
                r = post_plan(client, f"plan-{i}")
                assert r.status_code == 200, r.text
        with session(base) as client:
            r = post_plan(client, "plan-6")
    body = assert_envelope(r, "over_quota")
    assert body["recoverable"] is True
    assert body["retry_after_ms"] > 0
    assert "Retry-After" in r.headers
    hits = events(db_url, "over_quota.hit")
    assert [(h["scope"], h["bucket"]) for h in hits] == [("ip", "plan")]
    assert hits[0]["retry_after_ms"] == body["retry_after_ms"]


def test_p0_10_harmful_prompt_is_refused_and_logged_as_safety_refused(db_url: str) -> None:
    with running(db_url) as base, session(base) as client:
        r = post_plan(client, "harm-1", plan_body(HARMFUL_TOPIC))
    body = assert_envelope(r, "refused")
    assert body["reason"] == "safety"
    assert body["field"] == "topic"
    refusals = events(db_url, "safety.refused")
    assert refusals == [
        {"type": "safety.refused", "stage": "input", "category": "explicit_harm", "field": "topic"}
    ]
    runs = events(db_url, "model_run.recorded")
    assert runs  # the classifier's calls are recorded …
    assert {run["purpose"] for run in runs} == {"moderation"}  # … and no main-model call
    assert events(db_url, "lesson.created") == []


def test_harmful_model_output_is_refused_and_its_cost_still_recorded(db_url: str) -> None:
    with running(db_url) as base, session(base) as client:
        r = post_plan(client, "out-1", plan_body(HARMFUL_OUTPUT_TOPIC))
    body = assert_envelope(r, "refused")
    assert body["field"] == "beat1.narration"
    assert events(db_url, "safety.refused") == [
        {
            "type": "safety.refused",
            "stage": "output",
            "category": "explicit_harm",
            "field": "beat1.narration",
        }
    ]
    purposes = [run["purpose"] for run in events(db_url, "model_run.recorded")]
    assert purposes.count("plan") == 1
    assert events(db_url, "lesson.created") == []


def test_p0_11_ot_over_quota_refuses_the_next_plan_before_any_model_call(db_url: str) -> None:
    with running(db_url, over_quota_forced=True) as base, session(base) as client:
        r = post_plan(client, "full-1")
    body = assert_envelope(r, "over_quota")
    assert body["message"].startswith("Tutor is full for the day · come back in ")
    assert body["retry_after_ms"] <= 24 * 3600 * 1000
    assert events(db_url, "model_run.recorded") == []
    assert [(h["scope"], h["bucket"]) for h in events(db_url, "over_quota.hit")] == [
        ("global", "spend")
    ]


def omnitutor(argv: list[str], db_url: str) -> int:
    """Run a CLI command against the test database (without main()'s global log set-up)."""
    settings = Settings(database_url=db_url)
    args = build_parser(settings).parse_args(argv)
    code: int = args.handler(args, settings)
    return code


def test_p0_11_the_flag_pushed_by_hand_refuses_until_lifted(db_url: str) -> None:
    with running(db_url) as base, session(base) as client:
        assert omnitutor(["spend", "flag", "on", "--reason", "acceptance test 11"], db_url) == 0
        r = post_plan(client, "flagged")
        assert_envelope(r, "over_quota")
        assert events(db_url, "model_run.recorded") == []
        assert omnitutor(["spend", "flag", "off"], db_url) == 0
        # The refusal released the key: the same request now runs.
        again = post_plan(client, "flagged")
        assert again.status_code == 200, again.text
    assert "Idempotent-Replayed" not in again.headers
    assert {run["purpose"] for run in events(db_url, "model_run.recorded")} == {
        "moderation",
        "plan",
    }


async def test_p0_11_todays_spend_at_the_cap_refuses_new_plans(db_url: str) -> None:
    with running(db_url, daily_cap_usd=Decimal("0.05")) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await client.post("/v1/session")
            r = await client.post("/v1/plan", json=plan_body(), headers={"Idempotency-Key": "a"})
            assert r.status_code == 200, r.text
            # Model runs so far today reach the cap (not only the nightly aggregate).
            from psycopg_pool import AsyncConnectionPool

            from eventstore.store import EventStore

            async with AsyncConnectionPool(db_url, min_size=1, max_size=1, open=False) as pool:
                run = ModelRunRecorded("r1", "sonnet-4-6", "beat", 1000, 3000, 0.05, 900, "ok", "t")
                await EventStore(pool).append_unordered([NewEvent.of(run, EventMeta())])
            r = await client.post("/v1/plan", json=plan_body(), headers={"Idempotency-Key": "b"})
    body = assert_envelope(r, "over_quota")
    assert "full for the day" in body["message"]


def test_ops_purge_reports_what_it_deleted(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(db_url) as conn:
        user = conn.execute(
            "INSERT INTO users (id, anon_id) VALUES ('u', 'a') RETURNING id"
        ).fetchone()
        conn.execute(
            "INSERT INTO idempotency_keys (key, request_hash, user_id, status_code, "
            "response_json, response_body, media_type, expires_at) VALUES "
            "('u:old', 'h', %(u)s, 200, '{}', '{}', 'application/json', now() - interval '1 s'),"
            "('u:new', 'h', %(u)s, 200, '{}', '{}', 'application/json', now() + interval '1 h')",
            {"u": user[0] if user else None},
        )
        conn.execute(
            "INSERT INTO rate_buckets (scope, key, bucket, count, window_start) VALUES "
            "('ip', 'a', 'plan', 1, now() - interval '3 hours')"
        )
        conn.execute(
            "INSERT INTO sessions (id, user_id, last_seen_at) VALUES "
            "('idle', 'u', now() - interval '31 minutes'), ('busy', 'u', now())"
        )
    assert omnitutor(["ops", "purge"], db_url) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith(
        "purge: 1 expired idempotency keys and 1 old rate-limit slices deleted, "
        "1 idle sessions ended in "
    )
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT key FROM idempotency_keys").fetchall() == [("u:new",)]
        ended = "SELECT id, ended_at = last_seen_at FROM sessions WHERE ended_at IS NOT NULL"
        assert conn.execute(ended).fetchall() == [("idle", True)]


# ---- idempotency ---------------------------------------------------------------------------


def test_idempotent_replay_returns_the_identical_body_and_runs_nothing(db_url: str) -> None:
    with running(db_url) as base, session(base) as client:
        first = post_plan(client, "same")
        assert first.status_code == 200, first.text
        # The same request, keys reordered and re-spaced: the canonical body is the same.
        reordered = orjson.dumps(dict(reversed(list(plan_body().items()))))
        again = client.post(
            "/v1/plan",
            content=b" " + reordered + b"\n",
            headers={"Idempotency-Key": "same", "Content-Type": "application/json"},
        )
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["x-trace-id"] != first.headers["x-trace-id"]
    assert len(events(db_url, "lesson.created")) == 1
    assert [r["purpose"] for r in events(db_url, "model_run.recorded")].count("plan") == 1


def test_same_key_with_another_body_is_409_not_recoverable(db_url: str) -> None:
    with running(db_url) as base, session(base) as client:
        assert post_plan(client, "k").status_code == 200
        r = post_plan(client, "k", plan_body("Kepler's laws"))
    body = assert_envelope(r, "conflict")
    assert body["recoverable"] is False
    assert "retry_after_ms" not in body
    assert len(events(db_url, "lesson.created")) == 1


def test_keys_are_per_user(db_url: str) -> None:
    with running(db_url) as base, session(base) as alice, session(base) as bob:
        a, b = post_plan(alice, "shared-key"), post_plan(bob, "shared-key")
    assert a.status_code == b.status_code == 200
    assert a.json()["lesson_id"] != b.json()["lesson_id"]


def test_the_key_is_mandatory_on_plan_and_named_when_missing(db_url: str) -> None:
    with running(db_url) as base, session(base) as client:
        r = post_plan(client, None)
        bad = post_plan(client, "not a key")
        adjust = client.post("/v1/lesson/01HZX/adjust", json={})
        nosuch = client.post("/v1/lesson/01HZX/nosuch", json={})
        anonymous = httpx.post(
            f"{base}/v1/plan", json=plan_body(), headers={"Idempotency-Key": "x"}
        )
    body = assert_envelope(r, "invalid_input")
    assert body["field"] == "Idempotency-Key"
    assert "Idempotency-Key" in body["message"]
    assert assert_envelope(bad, "invalid_input")["field"] == "Idempotency-Key"
    # adjust exists and needs the key; a route that does not exist is the router's 404.
    assert assert_envelope(adjust, "invalid_input")["field"] == "Idempotency-Key"
    assert_envelope(nosuch, "not_found")
    assert_envelope(anonymous, "unauthorized")
    # Each refusal's own `error` event, and nothing else.
    assert {e["type"] for e in events(db_url)} <= {"error"}


def test_a_server_error_releases_the_key_so_a_retry_runs(db_url: str) -> None:
    with running(db_url) as base, session(base) as client:
        crash = post_plan(client, "retry-me", plan_body(CRASH_TOPIC))
        again = post_plan(client, "retry-me", plan_body(CRASH_TOPIC))
    assert_envelope(crash, "internal")
    assert_envelope(again, "internal")
    assert "Idempotent-Replayed" not in again.headers  # it ran again rather than replaying


async def test_concurrent_duplicates_over_http_execute_once(db_url: str) -> None:
    with running(db_url) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await client.post("/v1/session")
            answers = await asyncio.gather(
                *(
                    client.post("/v1/plan", json=plan_body(), headers={"Idempotency-Key": "dup"})
                    for _ in range(12)
                )
            )
            final = await client.post(
                "/v1/plan", json=plan_body(), headers={"Idempotency-Key": "dup"}
            )
    ok = [a for a in answers if a.status_code == 200]
    assert ok
    assert all(a.content == ok[0].content for a in ok)
    for a in answers:
        if a.status_code != 200:
            assert assert_envelope(a, "conflict")["recoverable"] is True
    assert final.content == ok[0].content
    assert len(events(db_url, "lesson.created")) == 1


# ---- rate limits over HTTP -----------------------------------------------------------------


async def test_thirty_simultaneous_plans_admit_exactly_five(db_url: str) -> None:
    with running(db_url) as base:
        clients = [httpx.AsyncClient(base_url=base, timeout=60) for _ in range(30)]
        try:
            for c in clients:
                assert (await c.post("/v1/session")).status_code == 201
            answers = await asyncio.gather(
                *(
                    c.post("/v1/plan", json=plan_body(), headers={"Idempotency-Key": f"c{i}"})
                    for i, c in enumerate(clients)
                )
            )
        finally:
            for c in clients:
                await c.aclose()
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [429] * 25
    assert len(events(db_url, "lesson.created")) == 5


def test_forwarded_addresses_count_only_behind_a_trusted_proxy(db_url: str) -> None:
    def plans_from(base: str, forwarded_for: str, n: int) -> list[int]:
        codes = []
        for i in range(n):
            with session(base, **{"X-Forwarded-For": forwarded_for}) as c:
                codes.append(post_plan(c, f"{forwarded_for.replace(', ', '_')}-{i}").status_code)
        return codes

    with running(db_url, trusted_proxies=_nets("127.0.0.1"), limit_plan_anon_per_hour=2) as base:
        assert plans_from(base, "198.51.100.1", 3) == [200, 200, 429]
        assert plans_from(base, "198.51.100.2", 1) == [200]  # another client behind nginx
        # A forged hop left of the proxy's own entry changes nothing.
        assert plans_from(base, "9.9.9.9, 198.51.100.1", 1) == [429]
    with running(db_url, limit_plan_anon_per_hour=2) as base:
        # Not a trusted proxy: the header is ignored and every request is 127.0.0.1's.
        assert plans_from(base, "203.0.113.1", 1) == [200]
        assert plans_from(base, "203.0.113.2", 1) == [200]
        assert plans_from(base, "203.0.113.3", 1) == [429]


def _nets(*specs: str) -> tuple[Any, ...]:
    import ipaddress

    return tuple(ipaddress.ip_network(s) for s in specs)


# ---- one vocabulary ------------------------------------------------------------------------


def test_every_error_code_is_reachable_over_http_and_enveloped(
    db_url: str, pg_admin_url: str
) -> None:
    seen: dict[str, httpx.Response] = {}
    ip = iter(f"198.51.100.{n}" for n in range(1, 250))
    settings = {"trusted_proxies": _nets("127.0.0.1"), "limit_plan_anon_per_hour": 1}

    def plan(topic: str, key: str, *, as_ip: str | None = None) -> httpx.Response:
        with session(base, **{"X-Forwarded-For": as_ip or next(ip)}) as c:
            return post_plan(c, key, plan_body(topic))

    with running(db_url, **settings) as base:
        seen["not_found"] = httpx.get(f"{base}/v1/nope")
        seen["method_not_allowed"] = httpx.get(f"{base}/v1/session")
        seen["forbidden_origin"] = httpx.post(
            f"{base}/v1/session", headers={"Origin": "https://evil.example"}
        )
        seen["unsupported_media_type"] = httpx.post(
            f"{base}/v1/session", content=b"x", headers={"Content-Type": "text/plain"}
        )
        seen["payload_too_large"] = httpx.post(
            f"{base}/v1/session", json={"client_meta": {"x": "y" * 70_000}}
        )
        seen["invalid_input"] = httpx.post(
            f"{base}/v1/session", content=b"{", headers={"Content-Type": "application/json"}
        )
        seen["unauthorized"] = httpx.post(
            f"{base}/v1/plan", json=plan_body(), headers={"Idempotency-Key": "k"}
        )
        seen["refused"] = plan(HARMFUL_TOPIC, "r")
        seen["rate_limited"] = plan(THROTTLE_TOPIC, "t")
        seen["model_unavailable"] = plan(OUTAGE_TOPIC, "o")
        seen["internal"] = plan(CRASH_TOPIC, "i")
        assert plan("Optics", "q1", as_ip="192.0.2.77").status_code == 200
        seen["over_quota"] = plan("Optics", "q2", as_ip="192.0.2.77")
        with session(base, **{"X-Forwarded-For": next(ip)}) as c:
            assert post_plan(c, "c", plan_body("Optics")).status_code == 200
            seen["conflict"] = post_plan(c, "c", plan_body("Acoustics"))
        with database_outage(pg_admin_url, db_url):
            seen["service_unavailable"] = httpx.post(f"{base}/v1/session")

    assert set(seen) == {str(code) for code in ErrorCode}
    for code, response in seen.items():
        assert_envelope(response, code)
    assert seen["method_not_allowed"].headers["allow"]
    assert seen["rate_limited"].json()["recoverable"] is True
    assert seen["model_unavailable"].json()["recoverable"] is True
    assert seen["service_unavailable"].headers["retry-after"] == "1"


def test_failure_log_lines_carry_the_code_and_trace_id(db_url: str) -> None:
    capture = structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars])
    with capture as logs, running(db_url) as base, session(base) as c:
        r = post_plan(c, "h", plan_body(HARMFUL_TOPIC))
    trace_id = r.headers["x-trace-id"]
    lines = [line for line in logs if line.get("trace_id") == trace_id]
    summary = [line for line in lines if line["event"] == "request"]
    assert len(summary) == 1
    assert summary[0]["code"] == "refused"
    assert summary[0]["status"] == 422


def test_spend_cap_applies_when_generation_starts_but_streaming_lessons_finish(
    db_url: str,
) -> None:
    with running(db_url) as base, session(base) as client:
        first = post_plan(client, "before-cap").json()["lesson_id"]
        second = post_plan(client, "also-before", body=plan_body("Kepler's laws")).json()
        streaming = client.get(f"/v1/lesson/{first}/stream")
        assert streaming.status_code == 200  # locked and generated before the cap is hit
        assert omnitutor(["spend", "flag", "on", "--reason", "cap at generation"], db_url) == 0
        runs_before = len(events(db_url, "model_run.recorded"))
        refused = client.get(f"/v1/lesson/{second['lesson_id']}/stream")
        assert_envelope(refused, "over_quota")
        assert "Tutor is full for the day" in refused.json()["message"]
        assert len(events(db_url, "plan.locked")) == 1  # the refused lesson was not locked
        assert len(events(db_url, "model_run.recorded")) == runs_before
        # A lesson locked before the cap is not refused: it streams (here, replays) to the end.
        again = client.get(f"/v1/lesson/{first}/stream")
        assert again.status_code == 200
        assert "event: lesson_complete" in again.text
        assert omnitutor(["spend", "flag", "off"], db_url) == 0
        assert client.get(f"/v1/lesson/{second['lesson_id']}/stream").status_code == 200


def test_a_generated_beat_is_screened_and_a_harmful_one_is_refused(db_url: str) -> None:
    with running(db_url) as base, session(base) as client:
        body = plan_body(HARMFUL_BEAT_TOPIC)
        lesson_id = post_plan(client, "harmful-beat", body=body).json()["lesson_id"]
        stream = client.get(f"/v1/lesson/{lesson_id}/stream")
    assert stream.status_code == 200
    assert "event: error" in stream.text
    assert '"code":"refused"' in stream.text.replace(" ", "")
    refused = events(db_url, "safety.refused")
    assert [(e["stage"], e["field"]) for e in refused] == [("output", "beat")]
    failed = events(db_url, "beat.failed")
    assert [(e["ord"], e["code"]) for e in failed] == [(2, "refused")]
    completed = {e["ord"] for e in events(db_url, "beat.completed")}
    assert 2 not in completed
    beat_runs = [e for e in events(db_url, "model_run.recorded") if e.get("beat_ord") == 2]
    assert any(run["purpose"] != "moderation" for run in beat_runs)  # its cost is recorded
