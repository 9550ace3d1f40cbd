"""Test fixtures: a real PostgreSQL, a template database built once, a fresh one per test.

The server is DATABASE_URL when set (CI points it at the machine's PostgreSQL); otherwise
the tests start the embedded server, as the product does. The template is migrated once per
test session; each test that asks for `db_url` gets `CREATE DATABASE … TEMPLATE` (a file
copy, ~50 ms) and it is dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.database import create_database, database_url, drop_database, open_pool
from eventstore.migrations import MIGRATIONS, migrate
from eventstore.settings import Settings

pytest_plugins = ["tests.fakes.anthropic_server", "tests.fakes.elevenlabs_server"]

_counter = itertools.count()

pytest_plugins = ["tests.fakes.anthropic_server", "tests.fakes.elevenlabs_server"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("DATABASE_URL")
    home = tmp_path_factory.mktemp("pg-home")
    with database_url(configured, home) as url:
        yield url


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = f"ot_tpl_{os.getpid()}"
    url = create_database(pg_admin_url, name)
    with psycopg.connect(url) as conn:
        migrate(conn, MIGRATIONS)
    yield name
    drop_database(pg_admin_url, name)


@pytest.fixture
def fresh_db(pg_admin_url: str, template_db: str) -> Iterator[tuple[str, str]]:
    """(name, url) of a new database copied from the migrated template."""
    name = f"ot_t_{os.getpid()}_{next(_counter)}"
    url = create_database(pg_admin_url, name, template=template_db)
    yield name, url
    drop_database(pg_admin_url, name)


@pytest.fixture
def db_url(fresh_db: tuple[str, str]) -> str:
    return fresh_db[1]


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database (no migrations applied)."""
    name = f"ot_e_{os.getpid()}_{next(_counter)}"
    yield create_database(pg_admin_url, name)
    drop_database(pg_admin_url, name)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with open_pool(db_url, max_size=8) as p:
        yield p


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test server: plain http (cookies without Secure), quiet logs."""
    base: dict[str, Any] = {"dev_http": True, "log_level": "warning", "pool_max": 8}
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def live_server(db_url: str) -> Iterator[str]:
    """Base URL of the app served over real HTTP against this test's database."""
    from tests.live import serve_app

    with serve_app(make_settings(), db_url) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto server (S3, SSM, …) on 127.0.0.1 for this test session."""
    from tests.aws import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every boto3 client made during the test at the moto server; returns its URL."""
    from tests.aws import aws_environment

    for name, value in aws_environment(moto_endpoint).items():
        monkeypatch.setenv(name, value)
    return moto_endpoint
