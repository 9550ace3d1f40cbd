"""Identifiers: ULIDs (sortable, time-encoded) as text, and request trace ids."""

from __future__ import annotations

from ulid import ULID


def new_id() -> str:
    return str(ULID())


def new_trace_id() -> str:
    return f"req_{ULID()}"
