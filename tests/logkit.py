"""Helpers for the event log's tests: events, waiting with a deadline, running hubs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from eventstore.database import open_pool
from eventstore.events import BeatPartial
from eventstore.hub import Hub, Subscription
from eventstore.store import EventMeta, EventStore, NewEvent, Sequencer, StoredEvent

META = EventMeta(trace_id="req_t", session_id="s1")


def partial(i: int) -> NewEvent:
    return NewEvent.of(BeatPartial(1, f"delta {i}"), META)


async def until(condition: Callable[[], bool | Awaitable[bool]], deadline_s: float = 10.0) -> None:
    """Wait for a condition, polling, with a deadline (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


async def collect(sub: Subscription, count: int, deadline_s: float = 15.0) -> list[StoredEvent]:
    got: list[StoredEvent] = []
    async with asyncio.timeout(deadline_s):
        while len(got) < count:
            got.extend(await sub.next_batch(timeout=1.0))
    return got


@contextlib.asynccontextmanager
async def running(
    store: EventStore, conninfo: str, *, sequencer: bool = True, poll_s: float = 5.0
) -> AsyncIterator[Hub]:
    """A hub (and this process's sequencer) running as tasks, as the app's lifespan does."""
    hub = Hub(store, conninfo, poll_s=poll_s)
    tasks = [asyncio.create_task(hub.run())]
    if sequencer:
        tasks.append(asyncio.create_task(Sequencer(store, on_sequenced=hub.wake).run()))
    try:
        await asyncio.wait_for(hub.listening.wait(), 10)
        yield hub
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=5)  # as the app's lifespan: bounded (web/app.py)


@contextlib.asynccontextmanager
async def other_process(db_url: str) -> AsyncIterator[EventStore]:
    """A second store on its own pool: stands in for another process."""
    async with open_pool(db_url, max_size=4) as p:
        yield EventStore(p)
