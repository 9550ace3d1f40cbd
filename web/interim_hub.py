"""A stand-in for eventstore's Hub (branch `eventstore`) until it is merged; same interface.

It reads the log once per wake-up per *subscriber* (the real hub reads once per lesson):
good enough to develop the stream against, not to benchmark. Delete it when the hub lands.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from types import TracebackType

from eventstore.store import EventStore, StoredEvent

PAGE = 500


class InterimSubscription:
    def __init__(self, hub: InterimHub, lesson_id: str, after: int) -> None:
        self.hub = hub
        self.lesson_id = lesson_id
        self.cursor = after
        self.wake = asyncio.Event()

    async def next_batch(self, timeout: float | None = None) -> list[StoredEvent]:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self.wake.clear()
            page = [e async for e in self.hub.store.read_lesson(self.lesson_id, self.cursor, PAGE)][
                :PAGE
            ]
            if page:
                self.cursor = page[-1].lesson_seq or self.cursor
                return page
            wait = self.hub.poll_s
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()

    async def __aenter__(self) -> InterimSubscription:
        self.hub.subs[self.lesson_id].add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subs = self.hub.subs.get(self.lesson_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self.hub.subs[self.lesson_id]


class InterimHub:
    def __init__(self, store: EventStore, poll_s: float = 0.2) -> None:
        self.store = store
        self.poll_s = poll_s
        self.subs: dict[str, set[InterimSubscription]] = defaultdict(set)
        store.on_append(self._on_append)

    def lesson(self, lesson_id: str, after_seq: int = 0) -> InterimSubscription:
        return InterimSubscription(self, lesson_id, after_seq)

    def _on_append(self, events: Sequence[StoredEvent]) -> None:
        for lesson_id in {e.lesson_id for e in events if e.lesson_id}:
            for sub in self.subs.get(lesson_id, ()):
                sub.wake.set()
