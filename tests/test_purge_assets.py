"""The purge deletes an erased student's assets: rows and objects, local and on S3 (moto).

End to end over HTTP with narration on (the local ElevenLabs server): a student has two
lessons with narrated beats, a make-me flashcards output (pre-ordered), a narrated video,
a diagram, and two spoken answers; a second student takes the first lesson too (its plan,
beats and so clips come from the shared cache) and asks one of the same questions (the same
answer, so the same clip). After deletion and purge the first student's objects and rows
are gone; the clips the second student's lesson uses stay, with their rows, and still
serve. Then, at the domain level: a purge that stops between the commit and the objects
is finished by the next run, an object a new request made again is left alone, and a clip
named only by an already-erased lesson or by another lesson's video is decided right.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from commands.accounts import soft_delete
from commands.assets import KEY_IN_URL, Assets, content_hash
from commands.assetstore import AssetStore, AssetStoreError, LocalAssetStore, S3AssetStore
from commands.privacy import purge, purge_user
from eventstore.events import (
    AudioReady,
    BeatCompleted,
    BeatStarted,
    DomainEvent,
    InteractionRecorded,
    LessonCreated,
    PlanLocked,
    PlanRevised,
)
from eventstore.ids import new_id
from eventstore.store import EventStore
from tests.conditions import wait_for
from tests.conftest import make_settings
from tests.fakes.elevenlabs_server import API_KEY, FakeElevenLabs
from tests.lesson_log import append_lesson, plan, user_and_session
from tests.live import serve_app, student_client
from tests.sse import read_stream
from tests.test_lessons_flow import PLAN_BODY

pytestmark = pytest.mark.anyio

VOICE = "voice-purge-1"
MP3 = b"\xff\xfb\x90\x00" * 64


def key_of(url: str) -> str:
    match = KEY_IN_URL.search(url)
    assert match is not None, url
    return match.group(0)


def hash_of(url: str) -> str:
    return key_of(url).split("/")[1].split(".")[0]


def rows_of(db_url: str, hashes: set[str]) -> set[str]:
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            "SELECT content_hash FROM assets WHERE content_hash = ANY(%s)", (sorted(hashes),)
        ).fetchall()
    return {h for (h,) in found}


def queued(db_url: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        return [k for (k,) in conn.execute("SELECT key FROM asset_deletions ORDER BY key")]


def makeme_count(db_url: str, lesson_id: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE lesson_id = %s AND type = 'interaction.recorded'"
            " AND payload_json->>'type' = 'makeme'",
            (lesson_id,),
        ).fetchone()
    return int(row[0]) if row else 0


def video_clips_recorded(db_url: str, lesson_id: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT p.fields->'response'->'clips' FROM personal_data AS p"
            " JOIN events AS e ON e.id = p.event_id WHERE e.lesson_id = %s"
            " AND e.type = 'interaction.recorded' AND e.payload_json->>'type' = 'makeme'"
            " AND p.fields->'payload'->>'output' = 'video'",
            (lesson_id,),
        ).fetchone()
    assert row is not None
    return sorted(set(row[0]))


def take_lesson(client: httpx.Client, body: dict[str, Any]) -> tuple[str, set[str]]:
    """Plan and stream a lesson to its end: (lesson id, its beats' clip URLs)."""
    r = client.post("/v1/plan", json=body)
    assert r.status_code == 200, r.text
    planned = r.json()
    events = read_stream(client, planned["lesson_id"]).events
    assert events[-1].event == "lesson_complete"
    beat1 = planned["beat1"]["audio_url"]
    urls = {beat1} if beat1 else set()
    for e in events:
        if e.event in {"beat_complete", "audio_ready"} and e.data["audio_url"]:
            urls.add(e.data["audio_url"])
    return str(planned["lesson_id"]), urls


def ask(client: httpx.Client, lesson_id: str, question: str) -> str:
    r = client.post(f"/v1/lesson/{lesson_id}/ask", json={"question": question, "beat_ord": 1})
    assert r.status_code == 200, r.text
    url = r.json()["audio_url"]
    assert url, "the answer is spoken"
    return str(url)


async def served(base_url: str, objects: AssetStore, url: str) -> bytes:
    """What a player gets for `url`: from the service's /assets/, or the bucket (which
    CloudFront serves in production; moto's bucket is not public)."""
    if not url.startswith("/assets/"):
        return await objects.get(key_of(url))
    async with httpx.AsyncClient(base_url=base_url) as client:
        r = await client.get(url)
    assert r.status_code == 200, url
    return r.content


@pytest.fixture(params=["local", "s3"])
def asset_place(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[dict[str, Any], AssetStore]:
    """(settings overrides, the store the service writes to): files, or a moto bucket."""
    if request.param == "local":
        return {}, LocalAssetStore(tmp_path / "assets")
    request.getfixturevalue("aws")
    bucket = f"purge-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return {"assets_bucket": bucket}, S3AssetStore(bucket)


async def test_purge_deletes_the_students_assets_and_keeps_the_shared_clips(
    db_url: str,
    tmp_path: Path,
    pool: AsyncConnectionPool[Any],
    fake_elevenlabs: FakeElevenLabs,
    asset_place: tuple[dict[str, Any], AssetStore],
) -> None:
    overrides, objects = asset_place
    settings = make_settings(
        home=tmp_path,
        offline_pace_ms=0,
        beat_partial_ms=0,
        elevenlabs_api_key=API_KEY,
        elevenlabs_base_url=fake_elevenlabs.base_url,
        tts_voice_id=VOICE,
        **overrides,
    )
    other_topic = {**PLAN_BODY, "topic": "Ohm's law in a torch"}
    with (
        serve_app(settings, db_url) as base,
        student_client(base, timeout=30) as victim,
        student_client(base, timeout=30) as bystander,
    ):
        assert victim.post("/v1/session").status_code == 201
        assert bystander.post("/v1/session").status_code == 201
        first, shared_beats = take_lesson(victim, PLAN_BODY)
        second, own_beats = take_lesson(victim, other_topic)
        theirs, their_beats = take_lesson(bystander, PLAN_BODY)
        assert their_beats == shared_beats  # the cached beats narrate the same words
        assert not own_beats & shared_beats
        own_answer = ask(victim, first, "Why does my kettle whistle?")
        shared_answer = ask(victim, first, "What is a spring constant?")
        # Each ask records its clip's URL (the purge finds it under any voice).
        listed = victim.get(f"/v1/lesson/{first}").json()["interactions"]
        spoken = {i["response"].get("audio_url") for i in listed if i["type"] == "ask"}
        assert spoken == {own_answer, shared_answer}
        assert ask(bystander, theirs, "What is a spring constant?") == shared_answer
        r = victim.post(f"/v1/lesson/{first}/visualize", json={"beat_ord": 2, "request": "x"})
        assert r.status_code == 200, r.text
        diagram = r.json()["url"]
        r = victim.post(f"/v1/lesson/{second}/makeme", json={"output": "video"})
        assert r.status_code == 200, r.text
        video = r.json()["url"]
        slides = {s["audio_url"] for s in r.json()["content"]["slides"]}
        assert slides
        assert slides <= own_beats  # offline, a slide narrates its beat
        # The video's interaction names its slides' clips, for the purge to find.
        assert video_clips_recorded(db_url, second) == sorted({key_of(u) for u in slides})
        # The pre-ordered flashcards are made as each lesson completes.
        wait_for(lambda: makeme_count(db_url, first) >= 1 and makeme_count(db_url, second) >= 2)
        flashcards = {
            f"/assets/makeme/{content_hash(lesson, 'flashcards')}.json"
            for lesson in (first, second)
        }
        assert victim.delete("/v1/account").status_code == 200

        mine = {key_of(u) for u in {own_answer, diagram, video, *flashcards, *own_beats}}
        kept = {key_of(u) for u in {shared_answer, *shared_beats}}
        for key in mine | kept:
            assert await objects.exists(key), key
        hashes = {k.split("/")[1].split(".")[0]: k for k in mine | kept}
        assert rows_of(db_url, set(hashes)) == set(hashes)
        playing = {u: await served(base, objects, u) for u in {shared_answer, *their_beats}}

        report = await purge(pool, EventStore(pool), settings, older_than_days=0)

        assert report.users == 1
        assert report.lessons == 2
        assert report.asset_rows == len(mine)
        assert report.files == len(mine)
        assert report.assets_kept == len(kept)
        assert report.files_left == 0
        assert f"{len(mine)} asset files deleted" in report.summary()
        for key in mine:
            assert not await objects.exists(key), key
        for key in kept:
            assert await objects.exists(key), key
        assert rows_of(db_url, set(hashes)) == {h for h, k in hashes.items() if k in kept}
        assert queued(db_url) == []
        # The second student's lesson still plays its clips.
        for url, clip_bytes in playing.items():
            assert await served(base, objects, url) == clip_bytes
        lesson = bystander.get(f"/v1/lesson/{theirs}").json()
        assert {b["audio_url"] for b in lesson["beats"]} == their_beats

    again = await purge(pool, EventStore(pool), settings, older_than_days=0)
    assert (again.users, again.asset_rows, again.files) == (0, 0, 0)


# ---- the purge's order and its reference check, at the domain level ------------------------


class RefusingStore:
    """The local store whose deletes fail until told otherwise (an S3 outage mid-purge)."""

    def __init__(self, inner: LocalAssetStore) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.refuse = True

    def url(self, key: str) -> str:
        return self.inner.url(key)

    async def put(self, key: str, data: bytes, mime: str) -> str:
        return await self.inner.put(key, data, mime)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def delete(self, key: str) -> None:
        if self.refuse:
            raise AssetStoreError(f"cannot delete {key}: the store is down")
        await self.inner.delete(key)


async def clip(assets: Assets, text: str) -> str:
    return (await assets.put(content_hash(text, VOICE), "audio", MP3 + text.encode())).url


async def a_lesson(pool: AsyncConnectionPool[Any], events: list[DomainEvent]) -> tuple[str, str]:
    """(user id, lesson id) of a lesson made of a creation and `events`."""
    user_id, session_id = await user_and_session(pool)
    lesson_id = new_id()
    start: list[DomainEvent] = [
        LessonCreated(session_id, user_id, "physics", "springs", "hs", {}),
        PlanRevised(1, plan(2), "initial"),
        PlanLocked(1, 2),
    ]
    await append_lesson(EventStore(pool), lesson_id, session_id, [*start, *events])
    return user_id, lesson_id


def beat(ord: int, text: str, url: str | None) -> list[DomainEvent]:
    beat_id = new_id()
    return [
        BeatStarted(ord, beat_id, "concept", f"beat {ord}", "sonnet-4-6"),
        BeatCompleted(ord, beat_id, "concept", {"text": text}, text, audio_url=url),
    ]


async def delete_user(pool: AsyncConnectionPool[Any], user_id: str, lesson_id: str) -> None:
    await soft_delete(pool, user_id, [lesson_id])


async def test_a_run_stopped_before_the_objects_is_finished_by_the_next(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    local = LocalAssetStore(tmp_path / "assets")
    refusing = RefusingStore(local)
    assets = Assets(pool, refusing)
    said, answered = "Springs push back.", "Because of Hooke."
    beat_url, answer_url = await clip(assets, said), await clip(assets, answered)
    asked = InteractionRecorded(
        new_id(), "ask", {"question": "why?"}, {"text": answered, "narration_text": answered}, 1
    )
    user_id, lesson_id = await a_lesson(
        pool, [*beat(1, said, None), AudioReady(1, beat_url), asked]
    )
    await delete_user(pool, user_id, lesson_id)
    keys = {key_of(beat_url), key_of(answer_url)}
    settings = make_settings(home=tmp_path, tts_voice_id=VOICE)

    # The store refuses every delete: the rows are gone, the objects stay, queued.
    report = await purge(pool, EventStore(pool), settings, 0, objects=refusing)
    assert (report.users, report.asset_rows, report.files, report.files_left) == (1, 2, 0, 2)
    assert "(2 left for the next run)" in report.summary()
    assert rows_of(db_url, {hash_of(beat_url), hash_of(answer_url)}) == set()
    assert set(queued(db_url)) == keys
    assert all([await local.exists(k) for k in keys])

    # The next run (no user left to purge) deletes them first.
    refusing.refuse = False
    again = await purge(pool, EventStore(pool), settings, 0, objects=refusing)
    assert (again.users, again.files, again.files_left) == (0, 2, 0)
    assert queued(db_url) == []
    assert not any([await local.exists(k) for k in keys])


async def test_an_object_made_again_after_the_rows_went_is_not_deleted(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    local = LocalAssetStore(tmp_path / "assets")
    assets = Assets(pool, local)
    said = "Energy is stored in the spring."
    url = await clip(assets, said)
    user_id, lesson_id = await a_lesson(pool, beat(1, said, url))
    await delete_user(pool, user_id, lesson_id)
    settings = make_settings(home=tmp_path, tts_voice_id=VOICE)
    # The purge commits (rows gone, key queued) and stops before the objects.
    await purge_user(pool, EventStore(pool), local, user_id, set(), VOICE)
    assert queued(db_url) == [key_of(url)]
    # A new lesson narrates the same words meanwhile: the clip and its row are made again.
    assert await clip(assets, said) == url
    report = await purge(pool, EventStore(pool), settings, 0, objects=local)
    assert report.files == 0
    assert queued(db_url) == []
    assert await local.exists(key_of(url))
    assert rows_of(db_url, {hash_of(url)}) == {hash_of(url)}


async def test_who_still_uses_a_clip(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    """Another lesson's video keeps a clip; a lesson already erased does not; an ask of
    another lesson with the same answer keeps that answer's clip."""
    local = LocalAssetStore(tmp_path / "assets")
    assets = Assets(pool, local)
    settings = make_settings(home=tmp_path, tts_voice_id=VOICE)
    in_a_video, erased_too, answered = "Slide one.", "Only ours.", "Same answer."
    urls = {t: await clip(assets, t) for t in (in_a_video, erased_too, answered)}

    def asking(text: str) -> InteractionRecorded:
        return InteractionRecorded(
            new_id(), "ask", {"question": "q"}, {"text": text, "narration_text": text}, 1
        )

    video = InteractionRecorded(
        new_id(),
        "makeme",
        {"output": "video"},
        {
            "asset_id": new_id(),
            "url": "/assets/makeme/" + "0" * 64 + ".json",
            "output": "video",
            "clips": [key_of(urls[in_a_video])],
        },
        None,
    )
    # The first student, purged first, also used "Only ours."; then the second student.
    early_user, early_lesson = await a_lesson(pool, beat(1, erased_too, urls[erased_too]))
    await delete_user(pool, early_user, early_lesson)
    await a_lesson(pool, [video, asking(answered)])  # someone who stays
    user_id, lesson_id = await a_lesson(
        pool,
        [
            *beat(1, in_a_video, urls[in_a_video]),
            *beat(2, erased_too, urls[erased_too]),
            asking(answered),
        ],
    )
    early = await purge(pool, EventStore(pool), settings, 0, objects=local)
    assert (early.asset_rows, early.assets_kept) == (0, 1)  # the second student uses it
    await delete_user(pool, user_id, lesson_id)
    report = await purge(pool, EventStore(pool), settings, 0, objects=local)
    assert (report.asset_rows, report.assets_kept, report.files) == (1, 2, 1)
    assert not await local.exists(key_of(urls[erased_too]))
    for text in (in_a_video, answered):
        assert await local.exists(key_of(urls[text]))
    assert rows_of(db_url, {hash_of(u) for u in urls.values()}) == {
        hash_of(urls[in_a_video]),
        hash_of(urls[answered]),
    }


async def test_an_answer_spoken_under_an_earlier_voice_is_erased_too(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    """A spoken answer's clip is named by the URL its ask recorded, so the purge finds it
    whatever voice the service has moved on to (recomputing sha256(text + voice) under the
    current voice would miss it)."""
    local = LocalAssetStore(tmp_path / "assets")
    assets = Assets(pool, local)
    answered = "Because the spring pulls back."
    answer_url = await clip(assets, answered)  # made under VOICE
    asked = InteractionRecorded(
        new_id(),
        "ask",
        {"question": "why?"},
        {"text": answered, "narration_text": answered, "audio_url": answer_url},
        1,
    )
    user_id, lesson_id = await a_lesson(pool, [asked])
    await delete_user(pool, user_id, lesson_id)
    settings = make_settings(home=tmp_path, tts_voice_id="a-newer-voice")

    report = await purge(pool, EventStore(pool), settings, 0, objects=local)

    assert (report.asset_rows, report.files) == (1, 1)
    assert not await local.exists(key_of(answer_url))
    assert rows_of(db_url, {hash_of(answer_url)}) == set()
