"""Browser analytics (POST /v1/event): client events of contracts §12 into the log.

A batch holds up to 100 events `{type, ts, lesson_id?, payload, id?}`. Each type's payload
is checked against the catalog's fields (below); only the client-side types are accepted, so
a browser can never write `cache.hit`, `safety.refused`, `model_run.recorded` or any other
server-side fact. A `lesson_id` must name a lesson of the caller's. The events are stored as
session-level rows of the log (no lesson_seq) with one append for the batch; an `id` the
client chose (a ULID) makes a resent batch a no-op, since event ids are the log's primary key.

Where the catalog lists `lesson_id` inside the payload, the event's own `lesson_id` is that
field: it is stored in the row's lesson_id column, not repeated in the payload.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from commands.errors import Conflict, InvalidInput, NotFound
from commands.messages import Caller
from eventstore.database import Pool, autocommit
from eventstore.errors import DuplicateEventId, translate_errors
from eventstore.events import CLIENT_EVENT_TYPES
from eventstore.ids import new_id
from eventstore.queries import load_queries
from eventstore.store import EventStore, NewEvent

_Q = load_queries(Path(__file__).parent / "sql" / "analytics.sql")

MAX_BATCH = 100
TEXT_MAX = 2000
SHORT_MAX = 200
COUNT_MAX = 10**9
ORD_MAX = 1000
AXES_MAX = 20
AXIS_MAX = 100
TS_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
ULID_PATTERN = "[0-9A-HJKMNP-TV-Z]{26}"
LESSON_ID_PATTERN = "[A-Za-z0-9]{1,64}"
DIRECTIONS = ("up", "down", "easier", "harder")
_ULID = re.compile(ULID_PATTERN)
_LESSON_ID = re.compile(LESSON_ID_PATTERN)

Check = Callable[[str, Any], Any]  # (field path, value) → the value to store, or InvalidInput


def _text(max_len: int = TEXT_MAX) -> Check:
    def check(path: str, value: Any) -> Any:
        if not isinstance(value, str):
            raise InvalidInput(path, "must be a string")
        if len(value) > max_len:
            raise InvalidInput(path, f"must be at most {max_len} characters")
        return value

    return check


def _whole(value: Any) -> int | None:
    """An integer, or an integral float (JSON Schema counts 3.0 as the integer 3)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _count(path: str, value: Any) -> Any:
    whole = _whole(value)
    if whole is None or not 0 <= whole <= COUNT_MAX:
        raise InvalidInput(path, f"must be a whole number between 0 and {COUNT_MAX}")
    return whole


def _ord(path: str, value: Any) -> Any:
    whole = _whole(value)
    if whole is None or not 0 <= whole <= ORD_MAX:
        raise InvalidInput(path, f"must be a beat number between 0 and {ORD_MAX}")
    return whole


def _object(path: str, value: Any) -> Any:
    if not isinstance(value, dict):
        raise InvalidInput(path, "must be an object")
    return value


def _text_list(path: str, value: Any) -> Any:
    if not isinstance(value, list) or len(value) > AXES_MAX:
        raise InvalidInput(path, f"must be a list of at most {AXES_MAX} strings")
    for i, item in enumerate(value):
        _text(AXIS_MAX)(f"{path}[{i}]", item)
    return value


def _one_of(*choices: str) -> Check:
    def check(path: str, value: Any) -> Any:
        if value not in choices:
            raise InvalidInput(path, f"must be one of {', '.join(choices)}")
        return value

    return check


@dataclass(frozen=True)
class Shape:
    """A client type's payload: required and optional fields, and whether it names a lesson."""

    required: Mapping[str, Check]
    optional: Mapping[str, Check]
    lesson: bool  # the catalog lists lesson_id: the event must carry one


_SHORT = _text(SHORT_MAX)
# Contracts §12, field by field. lesson_id appears here as `lesson=True`.
SHAPES: Mapping[str, Shape] = {
    "session.start": Shape({}, {"referrer": _text(), "ua": _text(), "viewport": _text(40)}, False),
    "discovery.search": Shape({"query": _text()}, {"source": _SHORT}, False),
    "lesson.invoke": Shape({"subject": _SHORT, "source": _SHORT}, {"topic": _text()}, False),
    "setup.skip": Shape({}, {}, False),
    "setup.submit": Shape({"intent": _object}, {}, False),
    "plan.shown": Shape({"time_to_render_ms": _count}, {}, True),
    "plan.iterate": Shape({}, {"chip": _SHORT, "free_text": _text()}, True),
    "plan.locked": Shape({"total_beats": _count}, {}, True),
    "beat.advance": Shape({"from_ord": _ord, "to_ord": _ord}, {}, True),
    "ask.fired": Shape({"beat_ord": _ord, "q_chars": _count}, {}, True),
    "attempt.submit": Shape({"beat_ord": _ord, "verdict": _SHORT}, {}, True),
    "adjust.applied": Shape({"direction": _one_of(*DIRECTIONS), "axes": _text_list}, {}, True),
    "visualize.fired": Shape({"beat_ord": _ord}, {}, True),
    "animate.fired": Shape({"beat_ord": _ord}, {}, True),
    "makeme.fired": Shape({"output_type": _SHORT}, {}, True),
    "lesson.complete": Shape({"duration_ms": _count}, {}, True),
    "lesson.abandon": Shape({"last_beat_ord": _ord}, {}, True),
}
assert set(SHAPES) == CLIENT_EVENT_TYPES  # every client type has its shape, and no other


@dataclass(frozen=True)
class ClientEvent:
    id: str | None
    type: str
    ts: datetime
    lesson_id: str | None
    payload: dict[str, Any]


def _ts(path: str, value: Any) -> datetime:
    """The client's clock: ISO 8601 or epoch milliseconds (kept in the payload as `client_ts`)."""
    whole = _whole(value)
    if whole is not None:
        if not 0 <= whole <= TS_MAX_MS:
            raise InvalidInput(path, f"must be epoch milliseconds between 0 and {TS_MAX_MS}")
        return datetime.fromtimestamp(whole / 1000, UTC)
    if isinstance(value, str) and len(value) <= 40:
        text = value.replace("Z", "+00:00").replace("z", "+00:00")
        text = re.sub(r"(T\d\d:\d\d):60", r"\1:59", text, flags=re.IGNORECASE)  # leap second
        try:
            ts = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(path, "must be ISO 8601 or epoch milliseconds") from None
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    raise InvalidInput(path, "must be ISO 8601 or epoch milliseconds")


def validate_event(index: int, raw: Any) -> ClientEvent:
    """One event of the batch, checked against its type's shape. Pure."""
    at = f"events[{index}]"
    if not isinstance(raw, dict):
        raise InvalidInput(at, "must be an object")
    unknown = sorted(set(raw) - {"type", "ts", "lesson_id", "payload", "id"})
    if unknown:
        raise InvalidInput(f"{at}.{unknown[0]}", "unknown field")
    type_ = raw.get("type")
    if not isinstance(type_, str):
        raise InvalidInput(f"{at}.type", "is required and must be a string")
    shape = SHAPES.get(type_)
    if shape is None:
        raise InvalidInput(f"{at}.type", f"{type_[:60]!r} is not a client event type")
    if "ts" not in raw:
        raise InvalidInput(f"{at}.ts", "is required")
    ts = _ts(f"{at}.ts", raw["ts"])
    event_id = raw.get("id")
    if event_id is not None and (not isinstance(event_id, str) or not _ULID.fullmatch(event_id)):
        raise InvalidInput(f"{at}.id", "must be a ULID (26 characters, Crockford base32)")
    lesson_id = raw.get("lesson_id")
    if lesson_id is not None and (
        not isinstance(lesson_id, str) or not _LESSON_ID.fullmatch(lesson_id)
    ):
        raise InvalidInput(f"{at}.lesson_id", "is not a lesson id")
    if shape.lesson and lesson_id is None:
        raise InvalidInput(f"{at}.lesson_id", f"is required for {type_}")
    payload_raw = raw.get("payload", {})
    if not isinstance(payload_raw, dict):
        raise InvalidInput(f"{at}.payload", "must be an object")
    payload: dict[str, Any] = {}
    for name, value in payload_raw.items():
        check = shape.required.get(name) or shape.optional.get(name)
        if check is None:
            raise InvalidInput(f"{at}.payload.{name}", f"is not a field of {type_}")
        payload[name] = check(f"{at}.payload.{name}", value)
    for name in shape.required:
        if name not in payload:
            raise InvalidInput(f"{at}.payload.{name}", f"is required for {type_}")
    payload["client_ts"] = ts.isoformat()
    return ClientEvent(event_id, type_, ts, lesson_id, payload)


def validate_batch(body: Any) -> list[ClientEvent]:
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    unknown = sorted(set(body) - {"events"})
    if unknown:
        raise InvalidInput(unknown[0], "unknown field")
    events = body.get("events")
    if not isinstance(events, list):
        raise InvalidInput("events", "is required and must be a list")
    if not 1 <= len(events) <= MAX_BATCH:
        raise InvalidInput("events", f"must hold 1 to {MAX_BATCH} events, got {len(events)}")
    return [validate_event(i, raw) for i, raw in enumerate(events)]


@dataclass(frozen=True)
class Recorded:
    accepted: int
    abandoned: tuple[str, ...]  # lessons a lesson.abandon event closed (the visit ends)


class OwnedLessons:
    """The lessons each user was last found to own, for a process's analytics batches.

    A browser sends its batches every few seconds naming the same lesson; asking the log
    each time was one more statement per request (an eighth of ingestion's rate, measured).
    Only a yes is kept, for `ttl_s`. A kept yes can never let anyone else write: a lesson
    changes owner only when a magic link merges an anonymous user into an account, or is
    deleted with its account, and both soft-delete the previous owner, whose sessions then
    authenticate no more.
    """

    def __init__(self, ttl_s: float = 300.0, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._found: dict[tuple[str, str], float] = {}  # (user, lesson) → when; oldest first
        self.statements = 0  # lookups sent to the database (a probe for tests)

    async def check(self, pool: Pool, user_id: str, lesson_ids: Sequence[str]) -> None:
        """Raise NotFound unless `user_id` owns every one of `lesson_ids`."""
        now = time.monotonic()
        unknown = [
            lesson
            for lesson in lesson_ids
            if now - self._found.get((user_id, lesson), -math.inf) > self.ttl_s
        ]
        if not unknown:
            return
        self.statements += 1
        owned = await _owned(pool, user_id, unknown)
        for lesson in owned:
            self._found.pop((user_id, lesson), None)  # re-inserted last: the newest
            self._found[(user_id, lesson)] = now
        while len(self._found) > self.max_entries:
            del self._found[next(iter(self._found))]
        for lesson_id in unknown:
            if lesson_id not in owned:
                raise NotFound(
                    f"No lesson {lesson_id} of yours: events naming it were not recorded."
                )


async def record(
    caller: Caller, body: Any, pool: Pool, store: EventStore, owned: OwnedLessons
) -> Recorded:
    """Validate the batch (nothing is stored unless all of it is valid) and append it."""
    events = validate_batch(body)
    lessons = sorted({e.lesson_id for e in events if e.lesson_id is not None})
    if lessons:
        await owned.check(pool, caller.user_id, lessons)
    meta = caller.meta()
    batch = [NewEvent(e.type, e.payload, meta, id=e.id or new_id()) for e in events]
    try:  # one statement, one commit for the whole batch
        await store.append_unordered(batch, lesson_ids=[e.lesson_id for e in events])
    except DuplicateEventId:
        raise Conflict("An event id of this batch was already used for another event.") from None
    abandoned = {e.lesson_id for e in events if e.type == "lesson.abandon" and e.lesson_id}
    return Recorded(len(events), tuple(sorted(abandoned)))


async def _owned(pool: Pool, user_id: str, lesson_ids: Sequence[str]) -> set[str]:
    with translate_errors():
        async with autocommit(pool) as conn:
            cur = await conn.execute(_Q["owned"], {"user_id": user_id, "lesson_ids": lesson_ids})
            return {r[0] for r in await cur.fetchall()}
