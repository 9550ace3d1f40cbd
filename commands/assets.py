"""The `assets` table in front of the asset store: each content hash is stored once.

`Assets.find(hash)` answers "was this made before?" (the forever caches of contracts §5);
`Assets.put(...)` writes the bytes to the store and records the row. Rows carry no lesson or
beat: an object is shared by every lesson whose request hashes to it, and deleting one lesson
must not delete another's clip (the foreign keys cascade). The log says which lesson used
which asset (audio.ready, interaction.recorded).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from commands.assetstore import MIME_BY_EXT, AssetStore, object_key
from eventstore.errors import translate_errors
from eventstore.ids import new_id
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "assets.sql")
Pool = AsyncConnectionPool[AsyncConnection[Any]]

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
        # Bytes first, row second: a row always names an object that exists. Two writers of
        # the same hash write the same key; the row's unique index keeps one of them.
        url = await self.store.put(key, data, mime)
        params = {
            "id": new_id(),
            "lesson_id": None,
            "beat_id": None,
            "type": type,
            "url": url,
            "mime": mime,
            "size_bytes": len(data),
            "content_hash": content_hash,
        }
        inserted = await self._one(_Q["asset_insert"], params)
        if inserted is not None:
            return inserted
        winner = await self.find(content_hash)
        assert winner is not None  # the conflicting row exists and rows are never deleted
        return winner
