"""The projections' migrations (versions 20-29)."""

from __future__ import annotations

from eventstore.migrations import Migration

MIGRATIONS: tuple[Migration, ...] = ()
