"""Reads over the projected tables, for the API. Soft-deleted rows never come back.

For read-your-writes after an append, call `projections.checkpoints.wait_for` with the
append's position first.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row

from eventstore.database import Pool
from eventstore.errors import translate_errors
from eventstore.queries import load_queries
from projections import spend
from projections.errors import BadCursor

_Q = load_queries(Path(__file__).parent / "sql" / "reads.sql")
MAX_PAGE = 100


@dataclass(frozen=True)
class LessonPage:
    lessons: list[dict[str, Any]]
    next_cursor: str | None  # None: this is the last page


async def lesson_summary(
    pool: Pool, lesson_id: str, user_id: str | None = None
) -> dict[str, Any] | None:
    """A lesson with its beats (ord order), or None if missing, deleted or not the user's."""
    with translate_errors():
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_Q["lesson"], {"lesson_id": lesson_id, "user_id": user_id})
            lesson = await cur.fetchone()
            if lesson is None:
                return None
            await cur.execute(_Q["lesson_beats"], {"lesson_id": lesson_id})
            lesson["beats"] = await cur.fetchall()
    return lesson


async def plan_revisions(pool: Pool, lesson_id: str) -> list[dict[str, Any]]:
    with translate_errors():
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_Q["plan_revisions"], {"lesson_id": lesson_id})
            return await cur.fetchall()


async def list_lessons(
    pool: Pool, user_id: str, limit: int = 20, cursor: str | None = None
) -> LessonPage:
    """A user's library, newest first; pass `next_cursor` back for the following page."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    after_created, after_id = decode_cursor(cursor) if cursor else (None, None)
    with translate_errors():
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                _Q["list_lessons"],
                {
                    "user_id": user_id,
                    "after_created": after_created,
                    "after_id": after_id,
                    "limit": limit + 1,
                },
            )
            rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return LessonPage(rows, next_cursor)


def encode_cursor(created_at: datetime, lesson_id: str) -> str:
    raw = f"{created_at.isoformat()}|{lesson_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, lesson_id = raw.split("|", 1)
        return datetime.fromisoformat(created), lesson_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(f"cursor {cursor[:40]!r} is not one this service issued") from None


async def spend_by_day(
    pool: Pool, days: int = 7, today: date | None = None
) -> list[spend.SpendRow]:
    """The daily spend table (day × model × purpose) for the last `days` days."""
    return await spend.report(pool, days, today)
