"""Coalescing lookups: the requests made at the same moment share one query.

A reconnect storm asks the same questions thousands of times within a second (whose session
is this cookie, what is in this lesson's log): one statement per request, each with its own
pool checkout and round trip, made the opens queue behind each other for the pool. A
`Batcher` answers every key asked for while its previous batch was in flight with one call
of `fetch(keys)`, so a storm costs a statement per batch, and a quiet process still sends
each lookup at once (the first request of a batch waits for nothing).

A key asked for again while it waits for its batch shares that entry (single flight). A key
never joins a batch already sent: a caller that must see everything committed before it
asked (a subscription's catch-up) gets a read that starts after it asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Fetch = Callable[[Sequence[K]], Awaitable[Mapping[K, V]]]


class Batcher(Generic[K, V]):
    """`await get(key)`: the value `fetch` gave for `key` in the next batch sent.

    At most `concurrency` batches are in flight (each holds one pooled connection), each of
    at most `max_batch` keys. A key `fetch` leaves out of its answer gets `missing`'s error
    (KeyError by default); an error of `fetch` goes to every caller of that batch.
    """

    def __init__(
        self,
        fetch: Fetch[K, V],
        *,
        max_batch: int = 256,
        concurrency: int = 2,
        name: str = "batch",
    ) -> None:
        self._fetch = fetch
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._name = name
        self._waiting: dict[K, asyncio.Future[V]] = {}  # insertion order: first asked, first sent
        self._in_flight = 0
        self._flush_soon = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0  # batches sent so far (a probe for tests and benchmarks)

    async def get(self, key: K) -> V:
        if self._closed:
            raise RuntimeError(f"{self._name}: closed")
        future = self._waiting.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
            self._waiting[key] = future
            self._schedule()
        # Shielded: a caller that goes away leaves the answer to the others asking.
        return await asyncio.shield(future)

    def _schedule(self) -> None:
        if self._flush_soon or self._in_flight >= self._concurrency:
            return  # a flush is due, or a batch in flight sends the next when it is done
        self._flush_soon = True
        # The next turn of the loop: whoever asks in this turn joins the same batch.
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        while self._waiting and self._in_flight < self._concurrency and not self._closed:
            batch: dict[K, asyncio.Future[V]] = {}
            for key in self._waiting:
                batch[key] = self._waiting[key]
                if len(batch) == self._max_batch:
                    break
            for key in batch:
                del self._waiting[key]
            self._in_flight += 1
            self.batches += 1
            task = asyncio.create_task(self._send(batch), name=f"{self._name}-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: dict[K, asyncio.Future[V]]) -> None:
        try:
            found = await self._fetch(list(batch))
        except Exception as e:
            for future in batch.values():
                if not future.done():
                    future.set_exception(e)
        except BaseException:
            for future in batch.values():
                future.cancel()
            raise
        else:
            for key, future in batch.items():
                if future.done():
                    continue
                if key in found:
                    future.set_result(found[key])
                else:
                    future.set_exception(KeyError(key))
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._schedule()

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109  # a bound, not a cancel scope
        """Send nothing more; let the batches in flight finish (each is one statement), and
        cancel what is left of them after `timeout`. A batch is not cancelled first: psycopg
        answers a cancellation inside its wait with a server-side cancel and waits again."""
        self._closed = True
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a batch's error as seen: every caller may have gone before it arrived."""
    if not future.cancelled():
        future.exception()
