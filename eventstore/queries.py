"""Named SQL queries, loaded once from a package's `.sql` file.

A file holds blocks that start with a `-- name: <query_name>` line (procrastinate's habit):
SQL stays in `.sql` files where an editor and `psql` understand it, and Python refers to a
query by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, LiteralString, cast

from psycopg import AsyncCursor

from eventstore.errors import StoreError

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(path: Path) -> dict[str, LiteralString]:
    text = path.read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, LiteralString] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{path}: query {name!r} is defined twice")
        # The text comes from a file shipped with the code, never from input: it is as
        # trusted as a literal, which is what psycopg's LiteralString asks for.
        queries[name] = cast(LiteralString, body.strip())
    return queries


async def one_row(cur: AsyncCursor[Any]) -> tuple[Any, ...]:
    """The row a statement always returns (an aggregate, an INSERT … RETURNING of one row)."""
    row: tuple[Any, ...] | None = await cur.fetchone()
    if row is None:
        raise StoreError("expected one row, got none")
    return row
