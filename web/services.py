"""What a request handler can reach: the resources the lifespan opened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from commands.assets import Assets
from commands.generation import Supervisor
from commands.narration import Narrator
from commands.providers import Provider
from eventstore.hub import Hub
from eventstore.settings import Settings
from eventstore.store import EventStore


@dataclass
class Services:
    settings: Settings
    pool: AsyncConnectionPool[AsyncConnection[Any]]
    store: EventStore
    hub: Hub
    provider: Provider
    supervisor: Supervisor
    assets: Assets
    narrator: Narrator


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
