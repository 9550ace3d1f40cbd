"""The service's full migration list, composed from every layer's own."""

from __future__ import annotations

from commands.schema import MIGRATIONS as COMMANDS
from eventstore.migrations import CORE, Migration, ordered
from projections.schema import MIGRATIONS as PROJECTIONS

MIGRATIONS: tuple[Migration, ...] = ordered(CORE, COMMANDS, PROJECTIONS)
