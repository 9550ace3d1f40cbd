"""What every `omnitutor` command and benchmark shares for talking to a person.

* `say`: progress and summaries on stderr (stdout carries only what a script would read).
* `ProgressBar`: one self-overwriting progress line on a terminal, a line every 5 s otherwise.
* `percentile`: the one percentile every benchmark reports, so their p99s are comparable.
* `Table`: the figures of a benchmark as one aligned table on stdout.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence


def say(message: str, *, end: str = "\n") -> None:
    """Progress and summaries go to stderr; stdout carries only what a script would read."""
    print(message, file=sys.stderr, end=end, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q of the values at or
    below it (rank ceil(q·n) of the sorted values, 1-based). NaN for no values.

    Always one of the measured values (never an interpolation), so a p99 is a latency that
    some request really had; p100 is the maximum and p0 the minimum.
    """
    if not values:
        return float("nan")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"percentile q must be within [0, 1], got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class ProgressBar:
    """`label [#####.....] 412,000/1,000,000 events  38,500 ev/s  ETA 15s` on stderr."""

    def __init__(
        self, label: str, unit: str = "events", width: int = 30, every_s: float = 0.25
    ) -> None:
        self.label, self.unit, self.width, self.every_s = label, unit, width, every_s
        self.started = time.perf_counter()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, done: int, total: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < (self.every_s if self.tty else 5.0):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        left = max(total - done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        filled = int(self.width * done / total) if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        line = (
            f"{self.label} [{bar}] {done:,}/{total:,} {self.unit}  "
            f"{rate:,.0f} {self.unit}/s  ETA {eta}"
        )
        say(("\r" + line) if self.tty else line, end="" if self.tty else "\n")

    def close(self) -> None:
        if self.tty:
            say("")


class Table:
    """Rows of text cells printed as one aligned table (numbers right-aligned)."""

    def __init__(self, header: Sequence[str], right: Sequence[int] = ()) -> None:
        self.header = list(header)
        self.right = set(right)
        self.rows: list[list[str]] = []

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.header):
            raise ValueError(f"a row needs {len(self.header)} cells, got {len(cells)}")
        self.rows.append(list(cells))

    def render(self) -> str:
        table = [self.header, *self.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(self.header))]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in self.right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(self.header), rule, *(line(r) for r in self.rows)])


def finished(label: str, started: float, what: str) -> None:
    """The one-line summary a long command ends with: `label: what in 12s`."""
    say(f"{label}: {what} in {time.perf_counter() - started:.0f}s")
