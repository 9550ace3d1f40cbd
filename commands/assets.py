"""The `assets` table in front of the asset store: each content hash is stored once.

`Assets.find(hash)` answers "was this made before?" (the forever caches of contracts §5);
`Assets.put(...)` writes the bytes to the store and records the row. Rows carry no lesson or
beat: an object is shared by every lesson whose request hashes to it, and deleting one lesson
must not delete another's clip (the foreign keys cascade). The log says which lesson used
which asset (audio.ready, interaction.recorded).

The purge (docs/privacy.md) is the only deleter: `forget` deletes an erased user's rows
that no other lesson uses, in the purge's transaction, and queues their keys;
`Assets.delete_queued` then deletes the objects. A row always names an object that exists:
`put` writes bytes and row under a lock on the hash, and the purge deletes an object under
the same lock, only while no row names it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from commands.assetstore import MIME_BY_EXT, AssetStore, AssetStoreError, object_key
from eventstore.errors import translate_errors
from eventstore.ids import new_id
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "assets.sql")
Pool = AsyncConnectionPool[AsyncConnection[Any]]
log = structlog.get_logger(__name__)

# The advisory-lock namespace of content hashes (put and the purge's object deletion).
LOCK_SPACE = 0x0A55E7
# An object key at the end of an asset URL, whatever the host, CDN or prefix before it.
KEY_IN_URL = re.compile(r"(?P<folder>[a-z]{1,16})/(?P<hash>[0-9a-f]{64})\.(?P<ext>[a-z0-9]{2,5})$")

# assets.type → the store's folder and the file extension.
FOLDERS = {
    "audio": ("audio", "mp3"),
    "diagram": ("diagrams", "svg"),
    "simulation": ("simulations", "json"),
    "flashcards": ("makeme", "json"),
    "notes": ("makeme", "json"),
    "slides": ("makeme", "json"),
    "video": ("makeme", "json"),
    "quiz": ("makeme", "json"),
    "summary": ("makeme", "json"),
    "mindmap": ("makeme", "json"),
}


def content_hash(*parts: str) -> str:
    """sha256 of the parts concatenated, as contracts §5 writes its cache keys."""
    return hashlib.sha256("".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Asset:
    id: str
    content_hash: str
    type: str
    url: str
    mime: str
    size_bytes: int

    @property
    def key(self) -> str:
        folder, ext = FOLDERS[self.type]
        return object_key(folder, self.content_hash, ext)


def _asset(row: tuple[Any, ...]) -> Asset:
    return Asset(
        id=row[0], content_hash=row[1], type=row[2], url=row[3], mime=row[4], size_bytes=row[5]
    )


class Assets:
    def __init__(self, pool: Pool, store: AssetStore) -> None:
        self.pool = pool
        self.store = store

    async def _one(self, query: str, params: dict[str, Any]) -> Asset | None:
        with translate_errors():
            async with self.pool.connection() as conn:
                row = await (await conn.execute(query, params)).fetchone()
        return _asset(row) if row else None

    async def find(self, content_hash: str) -> Asset | None:
        return await self._one(_Q["asset_by_hash"], {"content_hash": content_hash})

    async def get(self, asset_id: str) -> Asset | None:
        return await self._one(_Q["asset_by_id"], {"id": asset_id})

    async def put(
        self, content_hash: str, type: str, data: bytes, mime: str | None = None
    ) -> Asset:
        """Store `data` as the object for `content_hash` (or return the one already there)."""
        existing = await self.find(content_hash)
        if existing is not None:
            return existing
        folder, ext = FOLDERS[type]
        key = object_key(folder, content_hash, ext)
        mime = mime or MIME_BY_EXT[ext]
        params = {
            "id": new_id(),
            "lesson_id": None,
            "beat_id": None,
            "type": type,
            "url": self.store.url(key),
            "mime": mime,
            "size_bytes": len(data),
            "content_hash": content_hash,
        }
        # Bytes first, row second, both under the hash's lock (which the purge takes before
        # deleting an object whose row it deleted): a row always names an object that
        # exists. Two writers of the same hash write the same key; the row's unique index
        # keeps one of them.
        for _ in range(3):
            with translate_errors():
                async with self.pool.connection() as conn, conn.transaction():
                    await conn.execute(_Q["lock_hash"], {**params, "space": LOCK_SPACE})
                    params["url"] = await self.store.put(key, data, mime)
                    row = await (await conn.execute(_Q["asset_insert"], params)).fetchone()
                    if row is None:  # another writer's row won the race: return that one
                        cur = await conn.execute(_Q["asset_by_hash_any"], params)
                        row = await cur.fetchone()
            if row is not None:
                return _asset(row)
            # The winner's row was purged between our insert and our read: write again.
        raise AssetStoreError(f"the row for {key} kept disappearing while it was written")

    async def delete_queued(self) -> DeletedObjects:
        """Delete the objects whose rows the purge deleted (queued in asset_deletions),
        one at a time: each under its hash's lock and only while no row names it again (a
        new `put` of the same hash since then owns the object now). A key the store
        refuses stays queued for the next run."""
        with translate_errors():
            async with self.pool.connection() as conn:
                queued = await (await conn.execute(_Q["queued_deletions"])).fetchall()
        deleted = left = 0
        for key, content_hash in queued:
            lock = {"space": LOCK_SPACE, "content_hash": content_hash}
            try:
                with translate_errors():
                    async with self.pool.connection() as conn, conn.transaction():
                        await conn.execute(_Q["lock_hash"], lock)
                        named = await (await conn.execute(_Q["asset_row_exists"], lock)).fetchone()
                        if not (named and named[0]):
                            await self.store.delete(key)
                            deleted += 1
                        await conn.execute(_Q["dequeue_deletion"], {"key": key})
            except AssetStoreError as e:
                log.warning("asset object not deleted; queued for the next purge", error=str(e))
                left += 1
        return DeletedObjects(deleted, left)


@dataclass(frozen=True)
class DeletedObjects:
    deleted: int  # objects removed from the store
    left: int  # still queued: the store refused; the next purge run tries again


def key_in_url(url: object) -> str | None:
    """The object key an asset URL ends with (local, S3 or CDN alike), or None."""
    match = KEY_IN_URL.search(url) if isinstance(url, str) else None
    return None if match is None else object_key(match["folder"], match["hash"], match["ext"])


@dataclass
class ErasedAssets:
    """The assets of lessons being erased: every object their log or vault names, and the
    narration text behind each clip whose text is known (another lesson speaking the same
    words uses the same clip). Collected by the purge from the lessons' own events
    (commands/privacy.py)."""

    keys: dict[str, str] = field(default_factory=dict)  # content hash -> object key
    texts: dict[str, str] = field(default_factory=dict)  # a clip's content hash -> its text

    def add_url(self, url: object) -> str | None:
        """The object an asset URL names; its key, or None if the URL names none."""
        key = key_in_url(url)
        if key is not None:
            self.keys[_split_key(key)] = key
        return key

    def add(self, content_hash: str, type: str) -> None:
        folder, ext = FOLDERS[type]
        self.keys[content_hash] = object_key(folder, content_hash, ext)

    def add_spoken(self, url: object, text: object) -> None:
        """A clip named by its URL whose narration text is known (a spoken answer): found
        under whatever voice made it, and kept while another lesson says the same words."""
        key = self.add_url(url)
        if key is not None and isinstance(text, str) and text.strip():
            self.texts[_split_key(key)] = text

    def add_clip(self, text: object, voice_id: str) -> None:
        """The narration clip of `text` (contracts §5: sha256(text + voice_id))."""
        if isinstance(text, str) and text.strip():
            clip = content_hash(text, voice_id)
            self.add(clip, "audio")
            self.texts[clip] = text

    def clips(self) -> dict[str, str]:
        """The audio among them: the only objects two lessons can share (make-me outputs
        hash the lesson id, diagrams and simulations the beat id)."""
        return {h: k for h, k in self.keys.items() if k.startswith("audio/")}


def _split_key(key: str) -> str:
    """The content hash of an object key."""
    return key.split("/", 1)[1].split(".", 1)[0]


@dataclass(frozen=True)
class ForgottenAssets:
    rows: int  # asset rows deleted (their objects queued)
    kept: int  # rows kept: another lesson still uses them


async def forget(
    conn: AsyncConnection[Any], erased: ErasedAssets, lesson_ids: list[str]
) -> ForgottenAssets:
    """In the purge's transaction: delete the rows of the erased lessons' assets that no
    other lesson uses, and queue their objects for `Assets.delete_queued`."""
    clips = erased.clips()
    used: set[str] = set()
    if clips:
        cur = await conn.execute(
            _Q["assets_used_elsewhere"],
            {
                "hashes": list(clips),
                "keys": list(clips.values()),
                "texts": [erased.texts.get(h) for h in clips],
                "lesson_ids": lesson_ids,
            },
        )
        used = {r[0] for r in await cur.fetchall()}
    doomed = {h: k for h, k in erased.keys.items() if h not in used}
    row = await (
        await conn.execute(
            _Q["delete_assets"],
            {"hashes": list(doomed), "keys": list(doomed.values()), "kept": list(used)},
        )
    ).fetchone()
    return ForgottenAssets(int(row[0]), int(row[1])) if row else ForgottenAssets(0, 0)
