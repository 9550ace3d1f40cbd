"""The analysts' view of the log: `omnitutor events export|tail` and `omnitutor replay`.

    omnitutor events export [--after POSITION] [--lesson ID] [--type T] --format jsonl|csv
                            [--output FILE]
    omnitutor events tail [--lesson ID]
    omnitutor replay LESSON_ID

Export streams a page at a time (constant memory) up to the head it saw when it started;
progress goes to stderr, the events to stdout or --output. Global reads first run one
sequencer pass so that every committed event has its position and none is hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from eventstore import events as ev
from eventstore.database import database_url, open_pool
from eventstore.hub import Hub
from eventstore.settings import Settings
from eventstore.store import EventStore, Sequencer, StoredEvent
from ops.benchkit import say

FIELDS = (
    "position",
    "id",
    "lesson_id",
    "lesson_seq",
    "session_id",
    "type",
    "type_version",
    "ts",
    "payload",
    "metadata",
)


@contextlib.asynccontextmanager
async def open_store(url: str, max_size: int = 2) -> AsyncIterator[EventStore]:
    async with open_pool(url, max_size=max_size) as pool:
        yield EventStore(pool)


# -- export --------------------------------------------------------------------------------


def as_record(e: StoredEvent) -> dict[str, Any]:
    return {
        "position": e.position,
        "id": e.id,
        "lesson_id": e.lesson_id,
        "lesson_seq": e.lesson_seq,
        "session_id": e.session_id,
        "type": e.type,
        "type_version": e.type_version,
        "ts": e.ts.isoformat(),
        "payload": e.payload,
        "metadata": e.metadata,
    }


class JsonLines:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def write(self, e: StoredEvent) -> None:
        self.out.write(orjson.dumps(as_record(e)) + b"\n")


class CsvRows:
    """One row per event; payload and metadata as JSON text in their own columns."""

    def __init__(self, out: IO[bytes]) -> None:
        self.text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self.rows = csv.writer(self.text)
        self.rows.writerow(FIELDS)

    def write(self, e: StoredEvent) -> None:
        record = as_record(e)
        record["payload"] = orjson.dumps(e.payload).decode()
        record["metadata"] = orjson.dumps(e.metadata).decode()
        self.rows.writerow(["" if record[f] is None else record[f] for f in FIELDS])

    def detach(self) -> None:
        self.text.flush()
        self.text.detach()  # leave the underlying stream open for its owner


@contextlib.contextmanager
def output_stream(path: str | None) -> Iterator[IO[bytes]]:
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as f:
        yield f
    partial.replace(target)  # a finished export appears whole, an interrupted one never


class Progress:
    """A progress line on stderr, rewritten at most a few times a second."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.started = time.perf_counter()
        self._shown = 0.0
        self.live = sys.stderr.isatty()

    def tick(self, position: int) -> None:
        self.count += 1
        now = time.perf_counter()
        if now - self._shown >= (0.2 if self.live else 5.0):
            self._shown = now
            rate = self.count / max(now - self.started, 1e-9)
            line = f"export: {self.count:,} events, position {position:,} of {self.total:,}"
            say(f"{line} ({rate:,.0f} events/s)", end="\r" if self.live else "\n")

    def done(self) -> float:
        if self.live and self._shown:
            say("")
        return time.perf_counter() - self.started


async def export(args: argparse.Namespace, url: str) -> int:
    async with open_store(url) as store:
        await store.sequence()
        head = await store.head_position()
        progress = Progress(head)
        first = last = None
        with output_stream(args.output) as out:
            writer: JsonLines | CsvRows = JsonLines(out) if args.format == "jsonl" else CsvRows(out)
            try:
                async for e in store.read_all(args.after, type=args.type, lesson_id=args.lesson):
                    position = e.position or 0
                    if position > head:
                        break  # appended after the export began: the next export's share
                    writer.write(e)
                    progress.tick(position)
                    first = first or position
                    last = position
            finally:
                if isinstance(writer, CsvRows):
                    writer.detach()
        seconds = progress.done()
    where = args.output if args.output not in (None, "-") else "stdout"
    span = f"positions {first:,}..{last:,}" if first is not None else "nothing matched"
    rate = progress.count / max(seconds, 1e-9)
    say(
        f"export: {progress.count:,} events ({span}) as {args.format} to {where} "
        f"in {seconds:.2f}s ({rate:,.0f} events/s)"
    )
    return 0


# -- summaries, tail and replay ---------------------------------------------------------------


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


Summary = Callable[[Any], str]
SUMMARIES: dict[type[Any], Summary] = {
    ev.LessonCreated: lambda e: f"{e.subject} / {e.topic!r} at level {e.level} for {e.user_id}",
    ev.PlanRevised: lambda e: (
        f"plan v{e.revision_num} ({e.triggered_by}): {len(e.plan.get('beats', []))} beats"
        + (f", feedback {_clip(e.feedback_text, 40)!r}" if e.feedback_text else "")
    ),
    ev.PlanLocked: lambda e: f"plan v{e.revision_num} locked, {e.total_beats} beats",
    ev.BeatStarted: lambda e: f"beat {e.ord} ({e.kind}) {e.title!r} on {e.model}",
    ev.BeatPartial: lambda e: (
        f"beat {e.ord} {'restarted, ' if e.reset else ''}+{len(e.content_delta)} chars: "
        f"{_clip(e.content_delta, 40)!r}"
    ),
    ev.BeatCompleted: lambda e: (
        f"beat {e.ord} ({e.kind}) complete"
        + (", with audio" if e.audio_url else "")
        + f": {_clip(e.narration_text, 40)!r}"
    ),
    ev.BeatFailed: lambda e: f"beat {e.ord} failed: {e.code} {_clip(e.message, 40)!r}",
    ev.AudioReady: lambda e: f"audio for beat {e.beat_ord}: {e.audio_url}",
    ev.LessonCompleted: lambda e: (
        f"lesson complete in {e.duration_ms / 1000:.1f}s, cost ${sum(e.model_costs.values()):.4f}"
    ),
    ev.LessonAbandoned: lambda e: f"abandoned after beat {e.last_beat_ord} ({e.reason})",
    ev.LessonDeleted: lambda e: f"deleted ({e.reason})",
    ev.LessonTransferred: lambda e: f"moved from {e.from_user_id} to {e.to_user_id} ({e.reason})",
    ev.LessonErased: lambda e: f"personal data erased ({e.reason})",
    ev.InteractionRecorded: lambda e: (
        f"{e.type}"
        + (f" on beat {e.beat_ord}" if e.beat_ord is not None else "")
        + f": {_clip(orjson.dumps(e.payload).decode(), 40)}"
    ),
    ev.ModelRunRecorded: lambda e: (
        f"{e.model} {e.purpose} {e.status}: {e.prompt_tokens}+{e.completion_tokens} tokens, "
        f"${e.cost_usd:.5f}, {e.latency_ms} ms"
    ),
    ev.SafetyRefused: lambda e: f"refused at {e.stage}: {e.category}",
    ev.OverQuotaHit: lambda e: (
        f"over quota ({e.scope} {e.bucket}), retry in {e.retry_after_ms / 1000:.0f}s"
    ),
    ev.CacheHit: lambda e: f"cache hit: {e.key_kind}" + (f" ({e.model})" if e.model else ""),
    ev.ErrorRaised: lambda e: (
        f"{e.code}{' (recoverable)' if e.recoverable else ''}: {_clip(e.message, 50)!r}"
    ),
}


def summarize(e: StoredEvent) -> str:
    """One line a person can read; unknown or malformed payloads shown as compact JSON."""
    try:
        domain = e.domain()
    except (ev.UnknownEventType, TypeError, KeyError):
        return _clip(orjson.dumps(e.payload).decode())
    summary = SUMMARIES.get(type(domain))
    return summary(domain) if summary else _clip(orjson.dumps(e.payload).decode())


def _clock(ts: datetime) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def tail_line(e: StoredEvent) -> str:
    where = f"{e.lesson_id}#{e.lesson_seq}" if e.lesson_seq else (e.lesson_id or e.session_id)
    pos = f"{e.position:>8}" if e.position else "       -"
    return f"{pos}  {_clock(e.ts)}  {where or '-':<32}  {e.type:<20}  {summarize(e)}"


async def tail(args: argparse.Namespace, url: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # Ctrl-C ends the loop, not the process
    shown = 0
    async with open_store(url, max_size=3) as store:
        hub = Hub(store, url)
        tasks = [
            asyncio.create_task(hub.run()),
            asyncio.create_task(Sequencer(store, on_sequenced=hub.wake).run()),
        ]
        try:
            if args.lesson:
                sub = hub.lesson(args.lesson, await store.lesson_head(args.lesson))
                say(f"tail: following lesson {args.lesson} (Ctrl-C to stop)")
            else:
                await store.sequence()
                sub = hub.log(await store.head_position())
                say("tail: following the log (Ctrl-C to stop)")
            async with sub:
                while not stop.is_set():
                    for e in await sub.next_batch(timeout=0.2):
                        print(tail_line(e), flush=True)
                        shown += 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    say(f"tail: stopped after {shown:,} events")
    return 0


async def replay(args: argparse.Namespace, url: str) -> int:
    async with open_store(url) as store:
        count = 0
        start: datetime | None = None
        async for e in store.read_lesson(args.lesson_id):
            if start is None:
                start = e.ts
                print(f"lesson {args.lesson_id}, started {_clock(e.ts)}")
                print(f"{'seq':>5}  {'time':<12}  {'+elapsed':>9}  {'type':<20}  summary")
            elapsed = (e.ts - start).total_seconds()
            clock = e.ts.astimezone().strftime("%H:%M:%S.%f")[:-3]
            print(f"{e.lesson_seq:>5}  {clock:<12}  {elapsed:>8.1f}s  {e.type:<20}  {summarize(e)}")
            count += 1
    if count == 0:
        say(f"replay: lesson {args.lesson_id!r} has no events")
        return 1
    say(f"replay: {count} events")
    return 0


# -- registration ---------------------------------------------------------------------------


def _run(
    coro: Callable[[argparse.Namespace, str], Any],
) -> Callable[[argparse.Namespace, Settings], int]:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        with database_url(settings.database_url, settings.home) as url:
            result: int = asyncio.run(coro(args, url))
        return result

    return handler


def _position(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a position is a whole number, got {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a position is 0 or more, got {value}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = sub.add_parser("events", help="export or follow the event log")
    actions = events.add_subparsers(dest="events", required=True)

    x = actions.add_parser("export", help="stream events as JSON lines or CSV")
    x.add_argument(
        "--after",
        type=_position,
        default=0,
        metavar="POSITION",
        help="only events after this global position (default 0: all)",
    )
    x.add_argument("--lesson", metavar="ID", help="only this lesson's events")
    x.add_argument("--type", metavar="T", help="only events of this type (e.g. beat.completed)")
    x.add_argument("--format", choices=("jsonl", "csv"), required=True)
    x.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    x.set_defaults(handler=_run(export))

    t = actions.add_parser("tail", help="print events as they are appended (Ctrl-C stops)")
    t.add_argument("--lesson", metavar="ID", help="follow one lesson only")
    t.set_defaults(handler=_run(tail))

    r = sub.add_parser("replay", help="print a lesson's timeline")
    r.add_argument("lesson_id", metavar="LESSON_ID")
    r.set_defaults(handler=_run(replay))
