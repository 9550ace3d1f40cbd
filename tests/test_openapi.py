"""The OpenAPI document against the code: every route described, every answer conforming.

Schemathesis generates requests from the document (GET /v1/openapi.json of a live server on
Postgres) and checks each answer: never a 5xx, a documented status and content type, a body
that conforms to the document (every non-2xx is the error envelope with its trace id). The
stateful run follows the document's links (session → plan → lesson, stream, abandon).
OMNITUTOR_FUZZ_EXAMPLES sets the examples per operation (`make fuzz` runs many more).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Err
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import make_settings
from tests.live import serve_app
from web.api_schemas import COMPONENTS
from web.app import create_app
from web.openapi import COOKIE_AUTH, api_routes, document, spec_of

EXAMPLES = int(os.environ.get("OMNITUTOR_FUZZ_EXAMPLES", "25"))
# Generous limits, so the fuzzer reaches past the rate limit into the handlers.
SERVER = {
    "offline_pace_ms": 0,
    "limit_plan_anon_per_hour": 100_000,
    "limit_ask_anon_per_hour": 100_000,
    "sse_heartbeat_s": 1,
}


def test_every_v1_route_is_in_the_document_and_nothing_else() -> None:
    app = create_app(make_settings(), "postgresql://unused")
    routes = api_routes(app.routes)
    undescribed = [r.path for r in routes if spec_of(r) is None]
    assert undescribed == []
    paths = document(app.routes, COMPONENTS)["paths"]
    expected = {(r.path, m.lower()) for r in routes for m in (r.methods or ()) if m != "HEAD"}
    assert {(p, m) for p, ops in paths.items() for m in ops} == expected


@pytest.fixture
def fuzzed_server(db_url: str) -> Iterator[str]:
    with serve_app(make_settings(**SERVER), db_url) as base_url:
        yield base_url


@pytest.fixture
def session_token(fuzzed_server: str) -> str:
    """A student's session token (the ot_session cookie of POST /v1/session)."""
    with requests.Session() as s:
        s.post(f"{fuzzed_server}/v1/session").raise_for_status()
        return str(s.cookies["ot_session"])


# A schema-valid request may still be refused for what it means, not its shape: moderation
# (422), a lesson that is not the caller's (404), a state that forbids it (409), a limit
# (429). A stream cursor and a beat_ord are valid only within their own lesson, and a
# library cursor only as the server made it, which no schema can say (400).
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "404", "409", "422", "429"]

[[operations]]
include-path = "/v1/lessons"

[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "404", "409", "422", "429"]

[[operations]]
include-path-regex = "^/v1/lesson/"
max-stream-events = 50

[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "404", "409", "422", "429"]
"""


@pytest.fixture
def api_schema(fuzzed_server: str, session_token: str) -> OpenApiSchema:
    # The document names the cookie scheme; schemathesis sends this value for it, and tries
    # requests without it or with a bad one, which must be refused.
    auth = f'\n[auth.openapi.{COOKIE_AUTH}]\napi_key = "{session_token}"\n'
    config = SchemathesisConfig.from_str(CONFIG + auth)
    return schemathesis.openapi.from_url(f"{fuzzed_server}/v1/openapi.json", config=config)


def test_every_operation_answers_within_the_document(api_schema: OpenApiSchema) -> None:
    # One hypothesis run per operation (schemathesis' pytest plugin does the same, but its
    # lazy fixture loader does not work with pytest 9's nodes).
    operations = []
    for result in api_schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the document itself is not valid
        operations.append(result.ok())
    # Every operation but the document's own (schemathesis leaves that one out).
    assert len(operations) == sum(len(ops) for ops in api_schema.raw_schema["paths"].values()) - 1
    # Deleting the account ends the fuzzed session, so it goes last.
    operations.sort(key=lambda o: o.label == "DELETE /v1/account")
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def answers_within_the_document(case: Any) -> None:
            case.call_and_validate(timeout=20)

        answers_within_the_document()


def test_stateful_links_session_plan_lesson(api_schema: OpenApiSchema) -> None:
    # Without account deletion, which would end the session the run follows.
    api_schema.exclude(method="DELETE", path="/v1/account").as_state_machine().run(
        settings=settings(
            max_examples=max(2, EXAMPLES // 5),
            stateful_step_count=4,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
