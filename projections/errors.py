"""The read side's exceptions. Callers never see a psycopg error (eventstore.errors)."""

from __future__ import annotations


class ProjectionError(Exception):
    """Base of everything projections/ raises on its own account."""


class UnknownProjection(ProjectionError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no projection named {name!r} (known: {', '.join(known)})")
        self.name = name


class EventNotApplicable(ProjectionError):
    """An event contradicts the read model (e.g. a plan for a lesson never created)."""


class SkipRefused(ProjectionError):
    """`skip` named a position other than the one the projection failed at."""


class RebuildBusy(ProjectionError):
    """Another process is rebuilding."""


class RebuildFailed(ProjectionError):
    """A handler failed during a rebuild; the shadow tables keep what was done."""

    def __init__(self, name: str, position: int, error: str) -> None:
        super().__init__(f"rebuild of {name} failed at position {position}: {error}")
        self.name = name
        self.position = position
        self.error = error


class BadCursor(ProjectionError):
    """A pagination cursor that this service did not issue."""
