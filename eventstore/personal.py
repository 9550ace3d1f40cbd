"""Forgettable payloads: the personal fields of an event live apart from the log.

The log is append-only, and erasing a student must neither rewrite nor remove an event (the
positions and lesson sequences stay gap-free, every other lesson replays unchanged). So the
fields an event type declares personal (`PERSONAL` on the classes of eventstore/events.py,
`CLIENT_PERSONAL_FIELDS` for the browser's analytics types) are never written into
`events.payload_json`: an append splits them off into the vault (`personal_data`, schema v6),
one row per event, and every read merges them back. Erasure deletes the vault rows; the
events then read with those fields erased (`events.from_payload` fills them in), and nothing
personal is left in the database to read. docs/privacy.md says why this and not
crypto-shredding.

The store calls `seal` on append and writes the vault rows `seal` made in the append's own
commit (with `keep`, or in its INSERT from `document`); every read statement of the store
selects an event's vault fields beside it (eventstore/sql/store.sql), and StoredEvent merges
them into the payload when it is first read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
from psycopg import AsyncConnection

from eventstore.events import personal_fields
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "personal.sql")
Conn = AsyncConnection[Any]


class Unowned(ValueError):
    """Personal data that belongs to no lesson and no user could never be erased."""


@dataclass(frozen=True)
class VaultRow:
    event_id: str
    lesson_id: str | None  # lesson events: the data follows the lesson's owner
    user_id: str | None  # session-level events: the data is this user's
    fields: Mapping[str, Any]


class _Appended(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def payload(self) -> Mapping[str, Any]: ...


class _Stored(_Appended, Protocol):
    def with_payload(self, payload: dict[str, Any]) -> Any: ...


def split(type_: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the payload without its personal fields, the personal fields). Pure."""
    names = personal_fields(type_)
    public = {k: v for k, v in payload.items() if k not in names}
    personal = {k: v for k, v in payload.items() if k in names}
    return public, personal


@dataclass(frozen=True)
class Sealed:
    """A batch ready to append: the payloads to store in the log, and the vault's rows."""

    payloads: list[dict[str, Any]]
    rows: list[VaultRow]
    personal: dict[str, dict[str, Any]]  # event id → its personal fields (for the answer)


def seal(
    events: Sequence[_Appended],
    lesson_ids: Sequence[str | None],
    user_ids: Sequence[str | None],
) -> Sealed:
    """Split a batch's personal fields off (pure); each event's lesson and meta user."""
    payloads, rows, personal = [], [], {}
    for event, lesson_id, user_id in zip(events, lesson_ids, user_ids, strict=True):
        public, fields = split(event.type, event.payload)
        payloads.append(public)
        if not fields:
            continue
        if lesson_id is None and user_id is None:
            raise Unowned(f"{event.type} event {event.id} carries personal data but no owner")
        owner = None if lesson_id is not None else user_id
        rows.append(VaultRow(event.id, lesson_id, owner, fields))
        personal[event.id] = fields
    return Sealed(payloads, rows, personal)


@contextlib.asynccontextmanager
async def kept(conn: Conn, sealed: Sealed) -> AsyncIterator[None]:
    """Write a batch's vault rows in one transaction with the append inside the block, so
    the two take one commit (one WAL flush) and a failed append leaves no vault rows. A
    batch without personal data appends as it would without this module."""
    if not sealed.rows:
        yield
        return
    async with conn.transaction():
        await keep(conn, sealed.rows)
        yield


def document(rows: Sequence[VaultRow]) -> str:
    """A batch's vault rows as one JSON array, for a statement that keeps them itself."""
    return orjson.dumps(
        [
            {
                "event_id": r.event_id,
                "lesson_id": r.lesson_id,
                "user_id": r.user_id,
                "fields": r.fields,
            }
            for r in rows
        ]
    ).decode()


async def keep(conn: Conn, rows: Sequence[VaultRow]) -> None:
    """Write a batch's vault rows (before its events, in the same append)."""
    if not rows:
        return
    await conn.execute(
        _Q["keep"],
        {
            "event_ids": [r.event_id for r in rows],
            "lesson_ids": [r.lesson_id for r in rows],
            "user_ids": [r.user_id for r in rows],
            "fields": [orjson.dumps(r.fields).decode() for r in rows],
        },
    )


E = TypeVar("E", bound=_Stored)


def reveal(events: Sequence[E], personal: Mapping[str, Mapping[str, Any]]) -> list[E]:
    """The events with their personal fields merged back in (from the vault or memory)."""
    out = []
    for event in events:
        fields = personal.get(event.id)
        if fields:
            event = event.with_payload({**event.payload, **fields})
        out.append(event)
    return out


async def forget(conn: Conn, user_id: str, lesson_ids: Sequence[str]) -> int:
    """Erase a user's personal data: their lessons' rows and their own; returns how many."""
    cur = await conn.execute(_Q["forget"], {"user_id": user_id, "lesson_ids": list(lesson_ids)})
    return cur.rowcount


async def rekey(conn: Conn, from_user_id: str, to_user_id: str) -> None:
    """Session-level personal data of one user now belongs to another (an account merge)."""
    await conn.execute(_Q["rekey"], {"from_user_id": from_user_id, "to_user_id": to_user_id})
