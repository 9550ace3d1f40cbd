"""Service flags: named switches every process reads, set by ops or a nightly job.

`over_quota` is the one in use: the spend job (projections/spend.py) raises it when today's
spend reaches the cap, ops can set it by hand (`omnitutor spend flag`), and the guardrails
(commands/spendcap.py) refuse new generations while it is on. The queries live here, the
bottom layer, because both the command side and the projections use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "flags.sql")
OVER_QUOTA = "over_quota"


async def set_flag(
    conn: AsyncConnection[Any], name: str, value: bool, reason: str | None = None
) -> None:
    """Turn a flag on or off (in the caller's transaction, if it has one)."""
    await conn.execute(_Q["set_flag"], {"name": name, "value": value, "reason": reason})


async def get_flag(conn: AsyncConnection[Any], name: str) -> tuple[bool, str | None]:
    """(whether the flag is on, why); an unset flag is off."""
    row = await (await conn.execute(_Q["get_flag"], {"name": name})).fetchone()
    return (bool(row[0]), row[1]) if row else (False, None)
