"""Every projection, in the order a rebuild of several applies them."""

from __future__ import annotations

from collections.abc import Iterable

from projections import lesson_tables, model_runs
from projections.core import Projection
from projections.errors import UnknownProjection

PROJECTIONS: tuple[Projection, ...] = (lesson_tables.PROJECTION, model_runs.PROJECTION)
BY_NAME = {p.name: p for p in PROJECTIONS}


def select(names: Iterable[str | Projection] | None) -> tuple[Projection, ...]:
    """The named projections (all of them for None or empty), in catalog order.

    A Projection given as such (not by name) is taken as it is: tests run probes this way.
    """
    wanted = list(names or [])
    given = [p for p in wanted if isinstance(p, Projection)]
    for name in wanted:
        if isinstance(name, str) and name not in BY_NAME:
            raise UnknownProjection(name, list(BY_NAME))
    return tuple(p for p in PROJECTIONS if not wanted or p.name in wanted) + tuple(given)
