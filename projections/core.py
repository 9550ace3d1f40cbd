"""What a projection is, and the pieces every projection shares.

A projection is a name, the event types it reads, the tables it owns, and a handler that
applies a page of events to those tables. Each handler is written as a pure fold, one event
at a time, over the rows the page touches (loaded first, in one query per table), followed by
set-based writes of the rows that changed: the same result as one event per transaction,
without one round trip per event. The runner (live tables) and the rebuild (shadow tables)
call the same handler, with the table names as a parameter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

import orjson
from psycopg import AsyncConnection, sql

from eventstore import personal
from eventstore.queries import load_queries
from eventstore.store import StoredEvent

SHADOW_SUFFIX = "_shadow"


@dataclass(frozen=True)
class Tables:
    """Physical names of a projection's tables: the live ones, or their rebuild shadows."""

    names: Mapping[str, str]

    @classmethod
    def live(cls, tables: Sequence[str]) -> Tables:
        return cls({t: t for t in tables})

    @classmethod
    def shadow(cls, tables: Sequence[str]) -> Tables:
        return cls({t: t + SHADOW_SUFFIX for t in tables})

    def render(self, query: LiteralString) -> sql.Composed:
        """A named query with its `{table}` placeholders bound to these tables."""
        return sql.SQL(query).format(**{k: sql.Identifier(v) for k, v in self.names.items()})


Conn = AsyncConnection[Any]
PageHandler = Callable[[Conn, Tables, Sequence[StoredEvent]], Awaitable[None]]


@dataclass(frozen=True)
class Projection:
    name: str
    event_types: frozenset[str]
    tables: tuple[str, ...]  # parents before children (the order rows are written in)
    apply: PageHandler
    # Types that are read only from lesson streams (lesson_seq set): the browser's analytics
    # events reuse some lesson-log names (e.g. `plan.locked`) as session-level events.
    lesson_stream_types: frozenset[str] = frozenset()

    def accepts(self, event: StoredEvent) -> bool:
        if event.type not in self.event_types:
            return False
        return event.lesson_seq is not None or event.type not in self.lesson_stream_types


_Q = load_queries(Path(__file__).parent / "sql" / "log.sql")


async def head_position(conn: Conn) -> int:
    row = await (await conn.execute(_Q["head_position"])).fetchone()
    return int(row[0]) if row else 0


async def read_page(
    conn: Conn, after: int, upto: int, types: frozenset[str], limit: int
) -> list[StoredEvent]:
    """Events of `types` in (after, upto], in position order, at most `limit`.

    The caller reads `upto` (the head) first: every position up to the head is visible once
    the head is (the sequencer numbers in contiguous, committed ranges), so a short page
    means nothing of these types is left up to `upto`.
    """
    cur = await conn.execute(
        _Q["read_page"],
        {"after": after, "upto": upto, "types": sorted(types), "limit": limit},
    )
    return await personal.restore(conn, [StoredEvent(*r) for r in await cur.fetchall()])


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()
