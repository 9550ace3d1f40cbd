"""Narration end to end: real HTTP, real Postgres, the official ElevenLabs SDK against a local
server that speaks its text-to-speech API and answers real MP3 bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from commands.assets import content_hash
from commands.providers.prices import tts_cost_usd
from tests.conftest import make_settings
from tests.fakes.elevenlabs_server import API_KEY, FakeElevenLabs, mp3_frames
from tests.live import serve_app, student_client
from tests.sse import Sse, read_stream
from tests.test_lessons_flow import PLAN_BODY

VOICE = "voice-test-1"
MODEL = "eleven_flash_v2_5"


@pytest.fixture
def server(db_url: str, tmp_path: Path, fake_elevenlabs: FakeElevenLabs) -> Iterator[str]:
    settings = make_settings(
        home=tmp_path,
        offline_pace_ms=0,
        beat_partial_ms=0,
        sse_heartbeat_s=1.0,
        elevenlabs_api_key=API_KEY,
        elevenlabs_base_url=fake_elevenlabs.base_url,
        tts_voice_id=VOICE,
        tts_model=MODEL,
    )
    with serve_app(settings, db_url) as base_url:
        yield base_url


def plan_and_stream(base_url: str, key: str) -> tuple[dict[str, Any], list[Sse], httpx.Client]:
    client = student_client(base_url, timeout=30)
    assert client.post("/v1/session").status_code == 201
    r = client.post("/v1/plan", json=PLAN_BODY, headers={"Idempotency-Key": key})
    assert r.status_code == 200, r.text
    body = r.json()
    stream = read_stream(client, body["lesson_id"]).events
    events = [e for e in stream if e.event not in {"heartbeat", "retry"}]
    assert events[-1].event == "lesson_complete"
    return body, events, client


def audio_by_ord(body: dict[str, Any], events: list[Sse]) -> dict[int, str]:
    """Each beat's clip URL, from the plan answer, beat_complete or audio_ready."""
    urls: dict[int, str] = {}
    if body["beat1"]["audio_url"]:
        urls[1] = body["beat1"]["audio_url"]
    for e in events:
        if e.event == "beat_complete" and e.data["audio_url"]:
            urls[e.data["ord"]] = e.data["audio_url"]
        elif e.event == "audio_ready":
            urls[e.data["beat_ord"]] = e.data["audio_url"]
    return urls


def model_runs(db_url: str, purpose: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT payload_json FROM events WHERE type = 'model_run.recorded' "
            "AND payload_json->>'purpose' = %s ORDER BY position",
            (purpose,),
        ).fetchall()
    return [r[0] for r in rows]


def test_every_beat_is_narrated_and_its_clip_decodes(
    server: str, db_url: str, fake_elevenlabs: FakeElevenLabs
) -> None:
    body, events, client = plan_and_stream(server, "narrate-1")
    try:
        total = events[0].data["total_beats"]
        urls = audio_by_ord(body, events)
        assert sorted(urls) == list(range(1, total + 1))
        # audio_ready comes before the stream's end, after its beat's beat_complete.
        names = [(e.event, e.data.get("ord", e.data.get("beat_ord"))) for e in events]
        for ord in range(2, total + 1):
            if ("audio_ready", ord) in names:
                assert names.index(("beat_complete", ord)) < names.index(("audio_ready", ord))
        texts = {r.text for r in fake_elevenlabs.requests}
        assert len(fake_elevenlabs.requests) == len(texts) == len(set(urls.values()))
        for request in fake_elevenlabs.requests:
            assert (request.voice_id, request.model_id) == (VOICE, MODEL)
            assert request.output_format == "mp3_44100_128"
        for ord, url in urls.items():
            r = client.get(url)
            assert r.status_code == 200, (ord, url)
            assert r.headers["content-type"] == "audio/mpeg"
            assert mp3_frames(r.content) > 0
        # Stored exactly as the API answered, under the §5 key.
        lesson = client.get(f"/v1/lesson/{body['lesson_id']}").json()
        for beat in lesson["beats"]:
            key = content_hash(beat["narration_text"], VOICE)
            assert beat["audio_url"] == f"/assets/audio/{key}.mp3"
            assert client.get(beat["audio_url"]).content == FakeElevenLabs.clip_for(
                beat["narration_text"]
            )
    finally:
        client.close()
    runs = model_runs(db_url, "tts")
    assert len(runs) == len(fake_elevenlabs.requests)
    for run in runs:
        assert run["model"] == "elevenlabs"
        assert run["status"] == "ok"
        assert run["cost_usd"] == float(tts_cost_usd(MODEL, run["prompt_tokens"]))
        assert run["cost_usd"] > 0


def test_the_same_narration_is_stored_once_and_synthesised_once(
    server: str, db_url: str, fake_elevenlabs: FakeElevenLabs
) -> None:
    first, first_events, c1 = plan_and_stream(server, "dedup-1")
    calls = len(fake_elevenlabs.requests)
    # The same request again: the plan and beats come from the cache, so every narration
    # is one already stored and rides in the answer and in beat_complete.
    second, second_events, c2 = plan_and_stream(server, "dedup-2")
    c1.close()
    c2.close()
    assert second["lesson_id"] != first["lesson_id"]
    assert len(fake_elevenlabs.requests) == calls
    assert audio_by_ord(second, second_events) == audio_by_ord(first, first_events)
    assert second["beat1"]["audio_url"] == first["beat1"]["audio_url"]
    assert all(e.data["audio_url"] for e in second_events if e.event == "beat_complete"), (
        "a cached clip is ready before its beat completes"
    )
    with psycopg.connect(db_url) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM assets WHERE type = 'audio'").fetchone() or (
            0,
        )
    assert rows == calls
    assert len(model_runs(db_url, "tts")) == calls


def test_a_failed_clip_never_fails_the_lesson(
    server: str, db_url: str, fake_elevenlabs: FakeElevenLabs
) -> None:
    fake_elevenlabs.fail_requests = {3}  # beat 1 is request 1; the third clip fails
    body, events, client = plan_and_stream(server, "tts-fail-1")
    try:
        total = events[0].data["total_beats"]
        urls = audio_by_ord(body, events)
        assert len(urls) == total - 1
        errors = [e for e in events if e.event == "error"]
        assert len(errors) == 1
        assert errors[0].data["recoverable"] is True
        assert errors[0].data["code"] == "model_unavailable"
        assert "Narration" in errors[0].data["message"]
        lesson = client.get(f"/v1/lesson/{body['lesson_id']}").json()
        assert lesson["status"] == "complete"
        assert sum(1 for b in lesson["beats"] if b["audio_url"] is None) == 1
    finally:
        client.close()
    statuses = sorted(r["status"] for r in model_runs(db_url, "tts"))
    assert statuses == ["error"] + ["ok"] * (total - 1)


def test_offline_mode_has_no_audio(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(home=tmp_path, offline_pace_ms=0, beat_partial_ms=0)
    with serve_app(settings, db_url) as base_url:
        body, events, client = plan_and_stream(base_url, "offline-1")
        client.close()
    assert body["beat1"]["audio_url"] is None
    assert not [e for e in events if e.event in {"audio_ready", "error"}]
    assert all(e.data["audio_url"] is None for e in events if e.event == "beat_complete")
    assert not (tmp_path / "assets" / "audio").exists()


@pytest.mark.anyio
async def test_narrate_for_an_answer_is_cached_and_never_raises(
    pool: Any, tmp_path: Path, fake_elevenlabs: FakeElevenLabs
) -> None:
    from commands.assets import Assets
    from commands.assetstore import LocalAssetStore
    from commands.narration import Narrator
    from commands.tts import ElevenLabsTTS
    from eventstore.store import EventMeta, EventStore

    store = EventStore(pool)
    tts = ElevenLabsTTS(API_KEY, MODEL, base_url=fake_elevenlabs.base_url)
    narrator = Narrator(Assets(pool, LocalAssetStore(tmp_path)), tts, store, VOICE)

    meta = EventMeta(trace_id="req_test")
    try:
        first = await narrator.narrate("Springs store energy.", meta)
        again = await narrator.narrate("Springs store energy.", meta)
        assert first is not None
        assert first == again
        assert len(fake_elevenlabs.requests) == 1
        assert mp3_frames((tmp_path / first.removeprefix("/assets/")).read_bytes()) > 0
        fake_elevenlabs.fail_all = True
        assert await narrator.narrate("A new answer.", meta) is None
    finally:
        await narrator.aclose()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT payload_json->>'status' FROM events WHERE type = 'model_run.recorded' "
            "ORDER BY position"
        )
        assert await cur.fetchall() == [("ok",), ("error",)]


def test_an_answer_to_a_question_is_spoken(
    server: str, db_url: str, fake_elevenlabs: FakeElevenLabs
) -> None:
    body, _, client = plan_and_stream(server, "ask-1")
    try:
        r = client.post(f"/v1/lesson/{body['lesson_id']}/ask", json={"question": "Why a spring?"})
        assert r.status_code == 200, r.text
        answer = r.json()
        clip = client.get(answer["audio_url"])
    finally:
        client.close()
    assert clip.status_code == 200
    assert clip.headers["content-type"] == "audio/mpeg"
    assert mp3_frames(clip.content) > 0
    said = answer["answer"]["narration_text"]
    assert [req.text for req in fake_elevenlabs.requests].count(said) == 1
