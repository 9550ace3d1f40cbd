"""Coalesced lookups (eventstore/batching.py): one fetch for the requests made together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import pytest

from eventstore.batching import Batcher

pytestmark = pytest.mark.anyio


class Lookups:
    """A fetch that records its batches and, when gated, waits before answering."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.fail_next = False

    async def fetch(self, keys: Sequence[str]) -> Mapping[str, str]:
        self.batches.append(list(keys))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise LookupError("the database said no")
        return {k: k.upper() for k in keys if k != "absent"}


async def test_requests_made_together_share_one_fetch_and_a_key_is_fetched_once() -> None:
    lookups = Lookups()
    batcher = Batcher(lookups.fetch)
    keys = ["a", "b", "a", "c", "b", "a"]
    answers = await asyncio.gather(*(batcher.get(k) for k in keys))
    assert answers == ["A", "B", "A", "C", "B", "A"]
    assert lookups.batches == [["a", "b", "c"]]  # in the order first asked


async def test_a_lone_request_is_sent_at_once() -> None:
    lookups = Lookups()
    batcher = Batcher(lookups.fetch)
    assert await batcher.get("a") == "A"
    assert await batcher.get("b") == "B"
    assert lookups.batches == [["a"], ["b"]]


async def test_a_key_asked_while_its_batch_is_in_flight_waits_for_a_fetch_of_its_own() -> None:
    # What a subscription's catch-up needs: a read that began before it asked could miss
    # what was committed just before it registered.
    lookups = Lookups()
    lookups.gate = asyncio.Event()
    batcher = Batcher(lookups.fetch, concurrency=1)
    first = asyncio.create_task(batcher.get("a"))
    await _until(lambda: len(lookups.batches) == 1)
    second = asyncio.create_task(batcher.get("a"))
    third = asyncio.create_task(batcher.get("b"))
    await asyncio.sleep(0)  # let them ask
    assert lookups.batches == [["a"]]  # at most one batch in flight
    lookups.gate.set()
    assert list(await asyncio.gather(first, second, third)) == ["A", "A", "B"]
    assert lookups.batches == [["a"], ["a", "b"]]


async def test_batches_are_bounded_in_size_and_in_flight() -> None:
    lookups = Lookups()
    lookups.gate = asyncio.Event()
    batcher = Batcher(lookups.fetch, max_batch=3, concurrency=2)
    tasks = [asyncio.create_task(batcher.get(f"k{i}")) for i in range(10)]
    await _until(lambda: len(lookups.batches) == 2)
    assert [len(b) for b in lookups.batches] == [3, 3]  # two in flight, four waiting
    lookups.gate.set()
    assert await asyncio.gather(*tasks) == [f"K{i}" for i in range(10)]
    assert sorted(k for b in lookups.batches for k in b) == sorted(f"k{i}" for i in range(10))
    assert all(len(b) <= 3 for b in lookups.batches)


async def test_a_failed_fetch_fails_its_callers_only_and_a_missing_key_is_a_key_error() -> None:
    lookups = Lookups()
    batcher = Batcher(lookups.fetch)
    lookups.fail_next = True
    results = await asyncio.gather(batcher.get("a"), batcher.get("b"), return_exceptions=True)
    assert [type(r) for r in results] == [LookupError, LookupError]
    assert await batcher.get("a") == "A"  # the next batch is a new fetch
    with pytest.raises(KeyError):
        await batcher.get("absent")


async def test_a_caller_that_goes_away_leaves_the_answer_to_the_others() -> None:
    lookups = Lookups()
    lookups.gate = asyncio.Event()
    batcher = Batcher(lookups.fetch)
    leaving = asyncio.create_task(batcher.get("a"))
    staying = asyncio.create_task(batcher.get("a"))
    await _until(lambda: len(lookups.batches) == 1)
    leaving.cancel()
    lookups.gate.set()
    assert await staying == "A"
    assert leaving.cancelled()


async def test_closing_waits_for_the_batch_in_flight_and_refuses_new_requests() -> None:
    lookups = Lookups()
    lookups.gate = asyncio.Event()
    batcher = Batcher(lookups.fetch, concurrency=1)
    in_flight = asyncio.create_task(batcher.get("a"))
    await _until(lambda: len(lookups.batches) == 1)
    waiting = asyncio.create_task(batcher.get("b"))
    await asyncio.sleep(0)
    closing = asyncio.create_task(batcher.aclose())
    await asyncio.sleep(0)
    lookups.gate.set()
    await closing
    assert await in_flight == "A"  # finished, not cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiting  # never sent
    with pytest.raises(RuntimeError):
        await batcher.get("c")


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition()` holds (it does within a few turns)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")
