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
from typing import Any, LiteralString

import orjson
from psycopg import AsyncConnection, sql

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


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()
