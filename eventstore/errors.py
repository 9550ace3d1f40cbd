"""The event store's exceptions, and the one place driver errors become them.

Callers above the store never see a psycopg exception: `translate_errors()` turns driver
errors into these, dispatching on SQLSTATE and constraint name, never on message text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import errors as pgerr


class StoreError(Exception):
    """Base of everything the storage layer raises."""


class DatabaseUnavailable(StoreError):
    """The database could not be reached or dropped the connection."""


class AppendOnlyViolation(StoreError):
    """Something tried to change or remove a stored event."""


class WrongExpectedSeq(StoreError):
    """An append's expected_seq was stale: someone else appended to the lesson first."""

    def __init__(self, lesson_id: str, expected_seq: int, current_seq: int) -> None:
        super().__init__(
            f"lesson {lesson_id}: expected seq {expected_seq}, but the log is at {current_seq}"
        )
        self.lesson_id = lesson_id
        self.expected_seq = expected_seq
        self.current_seq = current_seq


class DuplicateEventId(StoreError):
    """An event id is already stored with different content (a retry must resend the same)."""


class UniqueKeyTaken(StoreError):
    """A unique key other than the log's own was already taken."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(f"unique key {constraint!r} is already taken")
        self.constraint = constraint


class MigrationError(StoreError):
    """A migration file changed after it was applied, or could not be applied."""


@contextmanager
def translate_errors(
    on_unique: Callable[[str | None], StoreError] | None = None,
) -> Iterator[None]:
    """Run a block of database work and re-raise driver errors as StoreError subclasses.

    `on_unique` maps the name of a violated unique constraint to a domain error; without it a
    violation becomes UniqueKeyTaken(constraint).
    """
    try:
        yield
    except pgerr.UniqueViolation as e:
        constraint = e.diag.constraint_name
        raise (on_unique or UniqueKeyTaken)(constraint) from e
    except pgerr.InsufficientPrivilege as e:
        raise AppendOnlyViolation(e.diag.message_primary or "not allowed") from e
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(str(e).strip() or "database unavailable") from e
    except psycopg.Error as e:
        raise StoreError(f"{type(e).__name__}: {e.diag.message_primary or e}") from e
