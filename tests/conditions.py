"""Waiting in tests: a free port, and polling a condition with a deadline (never a bare sleep).

There is no event to wait on when a test watches another thread, another process or the
database from outside, so these poll; each fails with what it waited for.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_for(
    predicate: Callable[[], T], deadline_s: float = 20.0, interval_s: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy (returned), or fail at the deadline."""
    give_up = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"not within {deadline_s}s: {what or predicate}")
        time.sleep(interval_s)  # polling from outside with a deadline


def seconds_until(predicate: Callable[[], object], deadline_s: float, what: str) -> float:
    """How long `predicate` took to hold (polled); fails after `deadline_s`."""
    started = time.monotonic()
    wait_for(predicate, deadline_s, 0.01, what)
    return time.monotonic() - started


async def wait_for_async(
    check: Callable[[], Awaitable[T]],
    deadline_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "",
) -> T:
    """As wait_for, for an async predicate."""
    give_up = time.monotonic() + deadline_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"not within {deadline_s}s: {what or check}")
        await asyncio.sleep(interval_s)  # polling from outside with a deadline
