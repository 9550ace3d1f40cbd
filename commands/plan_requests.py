"""The count of plan requests per cache key, with the normalised request behind each key.

Written on every POST /v1/plan (hit or miss); read by the nightly pre-warm
(commands/prewarm.py), which regenerates the most-asked plans before they expire.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventstore.errors import translate_errors
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "cache.sql")
Pool = AsyncConnectionPool[AsyncConnection[Any]]


async def note_plan_request(pool: Pool, key: str, model: str, request: Mapping[str, Any]) -> None:
    """Count one request for `key`; `request` is the normalised PlanInput as a dict."""
    params = {"key": key, "model": model, "request": orjson.dumps(request).decode()}
    with translate_errors():
        async with pool.connection() as conn:
            await conn.execute(_Q["note_plan_request"], params)
