"""CLI commands of the lessons area: `omnitutor hello-model` and `omnitutor bench lessons`."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from commands.bootstrap import open_provider
from commands.providers import ProviderError
from eventstore.settings import Settings
from ops.benchkit import say
from ops.cli_groups import Subparsers, command_group


def cmd_hello_model(args: argparse.Namespace, settings: Settings) -> int:
    """The P0 check: the fast tier says hello; prints the answer and the latency."""
    provider = open_provider(settings)

    async def ask() -> tuple[str, str, int]:
        try:
            result = await provider.hello()
        finally:
            await provider.aclose()
        run = result.runs[-1]
        return result.value, run.model, run.latency_ms

    started = time.perf_counter()
    try:
        answer, model, latency_ms = asyncio.run(ask())
    except ProviderError as e:
        say(f"hello-model failed after {time.perf_counter() - started:.2f}s: {e}")
        return 1
    print(answer)
    say(f"{settings.provider} provider, model {model} ({settings.model_fast}): {latency_ms} ms")
    return 0


def bench_area(subparsers: Subparsers[Any]) -> Subparsers[Any]:
    """The `bench` command's own sub-command list, shared by every area's benchmark."""
    return command_group(subparsers, "bench", "benchmarks; figures on stdout")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hello = subparsers.add_parser("hello-model", help="ask the fast model tier to say hello")
    hello.set_defaults(handler=cmd_hello_model)

    from ops import bench_lessons

    bench_lessons.register(bench_area(subparsers))
