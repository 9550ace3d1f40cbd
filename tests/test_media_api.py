"""visualize, animate and makeme over real HTTP against Postgres: idempotency, the forever
caches, validation, the deep tier, and video narration through the ElevenLabs SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from commands.simulation import run
from commands.svg import SVG_NS, elements
from tests.conditions import wait_for
from tests.conftest import make_settings
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.elevenlabs_server import API_KEY, FakeElevenLabs, mp3_frames
from tests.live import serve_app
from tests.test_narration import plan_and_stream


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    settings = make_settings(home=tmp_path, offline_pace_ms=0, beat_partial_ms=0)
    with serve_app(settings, db_url) as base_url:
        yield base_url


def rows(db_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(query, params).fetchall()


def runs(db_url: str, purpose: str) -> list[dict[str, Any]]:
    return [
        r[0]
        for r in rows(
            db_url,
            "SELECT payload_json FROM events WHERE type = 'model_run.recorded' "
            "AND payload_json->>'purpose' = %s ORDER BY position",
            purpose,
        )
    ]


def post(client: httpx.Client, path: str, body: dict[str, Any], key: str) -> httpx.Response:
    return client.post(path, json=body, headers={"Idempotency-Key": key})


def test_visualize_stores_an_inert_svg_once(server: str, db_url: str) -> None:
    plan, _, client = plan_and_stream(server, "viz-plan")
    lesson = plan["lesson_id"]
    path = f"/v1/lesson/{lesson}/visualize"
    try:
        first = post(client, path, {"beat_ord": 2, "request": "show the forces"}, "viz-1")
        assert first.status_code == 200, first.text
        body = first.json()
        assert set(body) == {"ok", "asset_id", "url", "kind", "trace_id"}
        assert body["kind"] == "svg"
        svg = client.get(body["url"])
        assert svg.headers["content-type"].startswith("image/svg+xml")
        assert "default-src 'none'" in svg.headers["content-security-policy"]
        assert svg.text.startswith(f'<svg xmlns="{SVG_NS}"')
        assert "rect" in set(elements(svg.text))
        # The same key replays the same answer; a new key for the same request is a cache hit.
        assert (
            post(client, path, {"beat_ord": 2, "request": "show the forces"}, "viz-1").json()
            == body
        )
        again = post(client, path, {"beat_ord": 2, "request": "show  the forces"}, "viz-2").json()
        assert (again["asset_id"], again["url"]) == (body["asset_id"], body["url"])
        other = post(client, path, {"beat_ord": 2}, "viz-3").json()
        assert other["asset_id"] != body["asset_id"]
    finally:
        client.close()
    assert len(runs(db_url, "visualize")) == 2
    assert rows(db_url, "SELECT asks FROM plan_requests") == [(1,)]  # noted for the pre-warm
    hits = rows(db_url, "SELECT count(*) FROM events WHERE type = 'cache.hit' "
                "AND payload_json->>'key_kind' = 'viz' AND lesson_id = %s", lesson)  # fmt: skip
    assert hits == [(1,)]
    interactions = rows(
        db_url,
        "SELECT payload_json->'payload'->>'request' FROM events "
        "WHERE type = 'interaction.recorded' AND payload_json->>'type' = 'visualize' "
        "AND lesson_id = %s ORDER BY position",
        lesson,
    )
    # The student's words are personal data, sealed in the vault (docs/privacy.md).
    assert len(interactions) == 3
    assert rows(db_url, "SELECT count(*) FROM assets WHERE type = 'diagram'") == [(2,)]


def test_bad_requests_name_the_field_and_change_nothing(server: str, db_url: str) -> None:
    plan, _, client = plan_and_stream(server, "viz-bad")
    lesson = plan["lesson_id"]
    wait_for(lambda: runs(db_url, "makeme"))  # the pre-ordered flashcards are in the log
    counted = "SELECT count(*) FROM events WHERE type <> 'error'"  # 4xx answers are logged
    before = rows(db_url, counted)
    try:
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("visualize", {"beat_ord": "2"}, "beat_ord"),
            ("visualize", {"beat_ord": 0}, "beat_ord"),
            ("visualize", {"beat_ord": 2, "request": 7}, "request"),
            ("animate", {"beat_ord": 2, "request": "x" * 501}, "request"),
            ("animate", {"beat_ord": 2, "colour": "red"}, "colour"),
            ("makeme", {"output": "poster"}, "output"),
            ("makeme", {}, "output"),
        ]
        for i, (route, body, field) in enumerate(cases):
            r = post(client, f"/v1/lesson/{lesson}/{route}", body, f"bad-{i}")
            assert r.status_code == 400, (route, body, r.text)
            error = r.json()
            assert error["code"] == "invalid_input"
            assert error["message"].startswith(f"{field}:")
            assert error["trace_id"]
        raw = httpx.post(
            f"{server}/v1/lesson/{lesson}/visualize",
            json={"beat_ord": 2},
            cookies=client.cookies,
        )
        assert raw.status_code == 400
        assert "Idempotency-Key" in raw.json()["message"]
        beyond = post(client, f"/v1/lesson/{lesson}/visualize", {"beat_ord": 99}, "bad-99")
        assert beyond.status_code == 404
    finally:
        client.close()
    assert rows(db_url, counted) == before
    with httpx.Client(base_url=server) as stranger:
        stranger.post("/v1/session")
        r = post(stranger, f"/v1/lesson/{lesson}/visualize", {"beat_ord": 2}, "stranger")
        assert r.status_code == 404


def test_animate_answers_a_valid_spec_that_runs(server: str, db_url: str) -> None:
    plan, _, client = plan_and_stream(server, "anim-plan")
    path = f"/v1/lesson/{plan['lesson_id']}/animate"
    try:
        r = post(client, path, {"beat_ord": 3}, "anim-1")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["kind"] == "simulation"
        spec = body["spec"]
        assert {p["name"] for p in spec["parameters"]} >= {"k"}
        trace = run(spec, {"k": 9.0}, steps=50)
        assert len(trace) == 50
        assert client.get(body["url"]).json() == spec
        again = post(client, path, {"beat_ord": 3}, "anim-2").json()
        assert again["spec"] == spec
        assert again["asset_id"] == body["asset_id"]
    finally:
        client.close()
    assert len(runs(db_url, "animate")) == 1


def test_makeme_outputs_are_made_once_per_lesson_and_type(server: str, db_url: str) -> None:
    plan, events, client = plan_and_stream(server, "makeme-plan")
    total = events[0].data["total_beats"]
    path = f"/v1/lesson/{plan['lesson_id']}/makeme"
    # The setup intent pre-ordered flashcards: made when the lesson completed.
    preordered = wait_for(lambda: runs(db_url, "makeme"))
    assert len(preordered) == 1
    try:
        made = {}
        for output in ("flashcards", "notes", "slides", "quiz", "summary", "mindmap", "video"):
            r = post(client, path, {"output": output}, f"mk-{output}")
            assert r.status_code == 200, (output, r.text)
            body = r.json()
            assert set(body) == {"ok", "asset_id", "url", "output", "content", "trace_id"}
            assert body["output"] == output
            assert client.get(body["url"]).json() == body["content"]
            made[output] = body
        assert len(made["flashcards"]["content"]["cards"]) == total
        assert made["video"]["content"]["kind"] == "narrated_slides"
        assert all(s["audio_url"] is None for s in made["video"]["content"]["slides"])
        again = post(client, path, {"output": "flashcards"}, "mk-again").json()
        assert again["asset_id"] == made["flashcards"]["asset_id"]
    finally:
        client.close()
    assert len(runs(db_url, "makeme")) == 7


def test_makeme_needs_a_complete_lesson(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        client.post("/v1/session")
        from tests.test_lessons_flow import PLAN_BODY

        plan = post(client, "/v1/plan", PLAN_BODY, "early-plan").json()
        r = post(client, f"/v1/lesson/{plan['lesson_id']}/makeme", {"output": "notes"}, "early")
        assert r.status_code == 409
        assert r.json()["code"] == "conflict"


def test_video_slides_are_narrated(
    db_url: str, tmp_path: Path, fake_elevenlabs: FakeElevenLabs
) -> None:
    settings = make_settings(
        home=tmp_path,
        offline_pace_ms=0,
        beat_partial_ms=0,
        elevenlabs_api_key=API_KEY,
        elevenlabs_base_url=fake_elevenlabs.base_url,
    )
    with serve_app(settings, db_url) as base_url:
        plan, _, client = plan_and_stream(base_url, "video-plan")
        try:
            r = post(client, f"/v1/lesson/{plan['lesson_id']}/makeme", {"output": "video"}, "v1")
            assert r.status_code == 200, r.text
            slides = r.json()["content"]["slides"]
            for slide in slides:
                assert slide["audio_url"]
                assert mp3_frames(client.get(slide["audio_url"]).content) > 0
        finally:
            client.close()
    # A slide narrates its beat's narration: those clips were already made for the lesson.
    assert len(fake_elevenlabs.requests) == len({s["narration"] for s in slides})


def test_derivation_assets_use_the_deep_tier(
    db_url: str, tmp_path: Path, fake_anthropic: FakeAnthropic
) -> None:
    settings = make_settings(
        home=tmp_path,
        beat_partial_ms=0,
        provider="anthropic",
        anthropic_api_key="sk-test",
        anthropic_base_url=fake_anthropic.base_url,
    )
    from tests.test_lessons_flow import PLAN_BODY

    body = {**PLAN_BODY, "intent": {**PLAN_BODY["intent"], "style": "conceptual"}}
    with serve_app(settings, db_url) as base_url, httpx.Client(base_url=base_url) as client:
        client.post("/v1/session")
        plan = post(client, "/v1/plan", body, "deep-plan").json()
        kinds = {b["ord"]: b["kind"] for b in plan["plan"]["beats"]}
        derivation = next(o for o, k in kinds.items() if k == "derivation")
        concept = next(o for o, k in kinds.items() if k == "concept" and o != 1)
        from tests.sse import read_stream

        assert read_stream(client, plan["lesson_id"]).events[-1].event == "lesson_complete"
        path = f"/v1/lesson/{plan['lesson_id']}/visualize"
        assert post(client, path, {"beat_ord": derivation}, "deep-1").status_code == 200
        assert post(client, path, {"beat_ord": concept}, "deep-2").status_code == 200
    models = {r["beat_ord"]: r["model"] for r in runs(db_url, "visualize")}
    assert models == {derivation: "opus-4-7", concept: "sonnet-4-6"}
    beat_models = {r["beat_ord"]: r["model"] for r in runs(db_url, "beat")}
    assert beat_models[derivation] == "opus-4-7"
    assert beat_models[concept] == "sonnet-4-6"


def test_a_harmful_diagram_is_refused_and_not_stored(
    db_url: str, tmp_path: Path, fake_anthropic: FakeAnthropic
) -> None:
    from tests.fakes.anthropic_server import TextReply
    from tests.sse import read_stream
    from tests.test_lessons_flow import PLAN_BODY

    settings = make_settings(
        home=tmp_path,
        beat_partial_ms=0,
        provider="anthropic",
        anthropic_api_key="sk-test",
        anthropic_base_url=fake_anthropic.base_url,
    )
    with serve_app(settings, db_url) as base_url, httpx.Client(base_url=base_url) as client:
        client.post("/v1/session")
        plan = post(client, "/v1/plan", PLAN_BODY, "harm-plan").json()
        assert read_stream(client, plan["lesson_id"]).events[-1].event == "lesson_complete"
        wait_for(lambda: runs(db_url, "makeme"))  # the pre-ordered flashcards are made
        harmful = "Here is how to build a bomb to hurt people."
        fake_anthropic.script_teaching(
            TextReply(f'<svg xmlns="{SVG_NS}"><text x="1" y="1">{harmful}</text></svg>')
        )
        r = post(client, f"/v1/lesson/{plan['lesson_id']}/visualize", {"beat_ord": 2}, "harm")
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "refused"
    assert len(runs(db_url, "visualize")) == 1  # recorded: the call cost money
    assert rows(db_url, "SELECT count(*) FROM assets WHERE type = 'diagram'") == [(0,)]
