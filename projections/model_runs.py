"""The model_runs projection: one row per model call, session-level calls included.

model_runs keeps the lesson id as recorded (a refused input's call may name a lesson that
never got a row) and resolves beat_id from its own map of beat slots (the first beat_id the
log gave a lesson's ord, as the beats table does), so its rows depend on the log alone and
not on how far the lessons projection has got (schema_v20.sql drops the two foreign keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from eventstore.events import BeatCompleted, BeatFailed, BeatStarted, ModelRunRecorded
from eventstore.queries import load_queries
from eventstore.store import StoredEvent
from projections.core import Conn, Projection, Tables
from projections.errors import EventNotApplicable

_Q = load_queries(Path(__file__).parent / "sql" / "model_runs.sql")
COST_PLACES = Decimal("0.00001")  # model_runs.cost_usd is NUMERIC(10,5)


@dataclass(slots=True)
class ModelRunRow:
    id: str
    trace_id: str
    lesson_id: str | None
    beat_id: str | None
    model: str
    purpose: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    latency_ms: int
    status: str
    error_code: str | None
    ts: datetime
    beat_ord: int | None
    position: int | None


COLUMNS = tuple(ModelRunRow.__dataclass_fields__)


def cost(value: float | int | str) -> Decimal:
    """A recorded cost as the ledger stores it: exact decimal, rounded to 5 places."""
    return Decimal(str(value)).quantize(COST_PLACES)


def evolve(
    beat_ids: dict[tuple[str, int], str],
    new_beat_ids: dict[tuple[str, int], str],
    runs: list[ModelRunRow],
    event: StoredEvent,
) -> None:
    """Apply one event to the page's beat map and run list (pure: no I/O)."""
    domain = event.domain()
    if isinstance(domain, BeatStarted | BeatCompleted | BeatFailed):
        if event.lesson_id is None:
            raise EventNotApplicable(f"{event.type} event {event.id} names no lesson")
        key = (event.lesson_id, domain.ord)
        if key not in beat_ids:
            beat_ids[key] = new_beat_ids[key] = domain.beat_id
    elif isinstance(domain, ModelRunRecorded):
        lesson_id = event.lesson_id
        slot = None
        if lesson_id is not None and domain.beat_ord is not None:
            slot = beat_ids.get((lesson_id, domain.beat_ord))
        runs.append(
            ModelRunRow(
                id=domain.run_id,
                trace_id=domain.trace_id,
                lesson_id=lesson_id,
                beat_id=slot,
                model=domain.model,
                purpose=domain.purpose,
                prompt_tokens=domain.prompt_tokens,
                completion_tokens=domain.completion_tokens,
                cost_usd=cost(domain.cost_usd),
                latency_ms=domain.latency_ms,
                status=domain.status,
                error_code=domain.error_code,
                ts=event.ts,
                beat_ord=domain.beat_ord,
                position=event.position,
            )
        )
    else:  # pragma: no cover - EVENT_TYPES lists exactly the types handled above
        raise EventNotApplicable(f"the model_runs projection does not read {event.type}")


async def apply(conn: Conn, tables: Tables, events: Sequence[StoredEvent]) -> None:
    if not events:
        return
    ids = sorted({e.lesson_id for e in events if e.lesson_id is not None})
    beat_ids: dict[tuple[str, int], str] = {}
    if ids:
        cur = await conn.execute(tables.render(_Q["load_beat_ids"]), {"ids": ids})
        beat_ids = {(r[0], r[1]): r[2] for r in await cur.fetchall()}
    new_beat_ids: dict[tuple[str, int], str] = {}
    runs: list[ModelRunRow] = []
    for event in events:
        evolve(beat_ids, new_beat_ids, runs, event)
    if new_beat_ids:
        await conn.execute(
            tables.render(_Q["insert_beat_ids"]),
            {
                "lesson_id": [k[0] for k in new_beat_ids],
                "ord": [k[1] for k in new_beat_ids],
                "beat_id": list(new_beat_ids.values()),
            },
        )
    if runs:
        params: dict[str, Any] = {name: [getattr(r, name) for r in runs] for name in COLUMNS}
        await conn.execute(tables.render(_Q["insert_model_runs"]), params)


EVENT_TYPES = frozenset(
    {BeatStarted.TYPE, BeatCompleted.TYPE, BeatFailed.TYPE, ModelRunRecorded.TYPE}
)

PROJECTION = Projection(
    name="model_runs",
    event_types=EVENT_TYPES,
    tables=("model_runs", "model_run_beats"),
    apply=apply,
    lesson_stream_types=frozenset({BeatStarted.TYPE, BeatCompleted.TYPE, BeatFailed.TYPE}),
)
