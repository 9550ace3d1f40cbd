"""The asset store: local files served under /assets/, S3 through moto, one row per hash."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from commands.assets import Assets, content_hash
from commands.assetstore import IMMUTABLE, SVG_CSP, LocalAssetStore, S3AssetStore, object_key
from tests.aws import aws_environment, moto_server
from tests.conftest import make_settings
from tests.live import serve_app

pytestmark = pytest.mark.anyio

CLIP = bytes(range(256)) * 40  # 10,240 bytes whose every offset is recognisable


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in aws_environment(moto_endpoint).items():
        monkeypatch.setenv(name, value)
    return moto_endpoint


async def test_local_store_writes_once_and_reads_back(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path)
    key = object_key("audio", content_hash("hello", "voice"), "mp3")
    assert not await store.exists(key)
    assert await store.put(key, CLIP, "audio/mpeg") == f"/assets/{key}"
    assert await store.exists(key)
    assert await store.get(key) == CLIP
    assert [p.name for p in (tmp_path / "audio").iterdir()] == [key.split("/")[1]]
    await store.delete(key)
    assert not await store.exists(key)
    await store.delete(key)  # already gone: not an error (the purge may run again)


def test_keys_are_content_addressed_only(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path)
    for bad in ("../etc/passwd", "audio/x.mp3", "audio/" + "a" * 64 + ".mp3/../x", "/abs"):
        with pytest.raises(ValueError, match="content-addressed"):
            store.path(bad)


async def test_one_row_and_one_object_per_hash(
    pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    assets = Assets(pool, LocalAssetStore(tmp_path))
    h = content_hash("same narration", "voice")
    first, second = await asyncio.gather(assets.put(h, "audio", CLIP), assets.put(h, "audio", CLIP))
    assert first == second
    assert first.url == f"/assets/audio/{h}.mp3"
    assert first.size_bytes == len(CLIP)
    assert await assets.find(h) == first
    assert await assets.get(first.id) == first
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM assets WHERE content_hash = %s", (h,))
        assert await cur.fetchone() == (1,)


def test_served_with_type_caching_and_byte_ranges(db_url: str, tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path / "assets")
    key = object_key("audio", content_hash("ranges", "v"), "mp3")
    svg_key = object_key("diagrams", content_hash("svg", "v"), "svg")
    asyncio.run(store.put(key, CLIP, "audio/mpeg"))
    asyncio.run(store.put(svg_key, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"))
    with serve_app(make_settings(home=tmp_path), db_url) as base, httpx.Client(base_url=base) as c:
        whole = c.get(f"/assets/{key}")
        assert whole.status_code == 200
        assert whole.content == CLIP
        assert whole.headers["content-type"] == "audio/mpeg"
        assert whole.headers["cache-control"] == IMMUTABLE
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["x-content-type-options"] == "nosniff"
        part = c.get(f"/assets/{key}", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206
        assert part.content == CLIP[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(CLIP)}"
        tail = c.get(f"/assets/{key}", headers={"Range": "bytes=-16"})
        assert tail.status_code == 206
        assert tail.content == CLIP[-16:]
        beyond = c.get(f"/assets/{key}", headers={"Range": f"bytes={len(CLIP)}-"})
        assert beyond.status_code == 416
        svg = c.get(f"/assets/{svg_key}")
        assert svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.headers["content-security-policy"] == SVG_CSP
        for missing in (f"/assets/{key[:-3]}wav", "/assets/../pyproject.toml", "/assets/x"):
            r = c.get(missing)
            assert r.status_code == 404, missing
            assert r.json()["code"] == "not_found"


async def test_s3_store_against_moto(aws: str) -> None:
    boto3.client("s3").create_bucket(Bucket="omnitutor-assets")
    store = S3AssetStore("omnitutor-assets", prefix="m1/", base_url="https://cdn.example.test")
    key = object_key("audio", content_hash("s3", "voice"), "mp3")
    assert not await store.exists(key)
    assert await store.put(key, CLIP, "audio/mpeg") == f"https://cdn.example.test/m1/{key}"
    assert await store.exists(key)
    assert await store.get(key) == CLIP
    head = boto3.client("s3").head_object(Bucket="omnitutor-assets", Key=f"m1/{key}")
    assert head["ContentType"] == "audio/mpeg"
    assert head["CacheControl"] == IMMUTABLE
    assert os.environ["AWS_ENDPOINT_URL"] == aws
    plain = S3AssetStore("omnitutor-assets")
    assert plain.url(key) == f"{aws}/omnitutor-assets/{key}"
    await store.delete(key)
    assert not await store.exists(key)
    await store.delete(key)  # already gone: not an error
    with pytest.raises(ValueError, match="content-addressed"):
        await store.delete("audio/")  # never a prefix: one object at a time
