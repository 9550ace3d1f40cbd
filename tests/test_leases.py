"""Generation requests (commands/generation.Leases.request): what a stream open asks for."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from commands.generation import Leases

pytestmark = pytest.mark.anyio


def row(db_url: str, lesson_id: str) -> tuple[str, str] | None:
    """(state, xmin/xmax): xmin changes when the row is written, xmax when it is locked."""
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            "SELECT state, xmin::text || '/' || xmax::text FROM lesson_generation"
            " WHERE lesson_id = %s",
            (lesson_id,),
        ).fetchone()
    return (found[0], found[1]) if found else None


async def test_a_request_writes_only_when_it_changes_something(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    leases = Leases(pool, "worker-a", ttl_s=30)
    assert await leases.request("L1") is True  # new: free at once
    state, written = row(db_url, "L1") or ("", "")
    assert state == "pending"
    assert await leases.request("L1") is True  # still free, and nothing written or locked
    assert row(db_url, "L1") == ("pending", written)
    assert await leases.claim(1, "L1") == ["L1"]
    claimed = row(db_url, "L1")
    assert await leases.request("L1") is False  # a live worker has it: a reopened stream
    assert row(db_url, "L1") == claimed
    await leases.finish("L1", "failed")
    assert await leases.request("L1") is True  # a failed lesson is re-armed
    assert (row(db_url, "L1") or ("",))[0] == "pending"
    await leases.claim(1, "L1")
    await leases.finish("L1", "done")
    done = row(db_url, "L1")
    assert await leases.request("L1") is False  # done stays done
    assert row(db_url, "L1") == done
    await leases.aclose()


async def test_requests_arriving_together_are_one_statement(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    leases = Leases(pool, "worker-a", ttl_s=30)
    await leases.request("taken")
    await leases.claim(1, "taken")
    before = leases._requests.batches
    lessons = [f"L{i}" for i in range(30)]
    answers = await asyncio.gather(*(leases.request(x) for x in [*lessons, "taken", "L0"]))
    assert answers == [True] * 30 + [False, True]
    assert leases._requests.batches - before == 1
    assert all((row(db_url, x) or ("",))[0] == "pending" for x in lessons)
    await leases.aclose()
