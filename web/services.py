"""What a request handler can reach: the resources the lifespan opened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from commands.generation import Supervisor
from commands.providers import Provider
from eventstore.store import EventStore
from web.settings import Settings
from web.stream import LessonHub


@dataclass
class Services:
    settings: Settings
    pool: AsyncConnectionPool[AsyncConnection[Any]]
    store: EventStore
    hub: LessonHub
    provider: Provider
    supervisor: Supervisor


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
