"""The account endpoints' JSON Schemas (web/accounts_schemas.py) agree with the validators."""

from __future__ import annotations

import jsonschema  # type: ignore[import-untyped]  # a dependency of schemathesis, no stubs
import pytest

from commands.analytics import SHAPES, validate_batch
from tests.test_analytics import VALID, raw
from web.accounts_schemas import EVENTS_REQUEST, MAGIC_LINK_REQUEST, PAYLOAD_FIELDS


@pytest.mark.parametrize("type_", sorted(SHAPES))
def test_each_type_names_the_same_fields_in_both(type_: str) -> None:
    shape = SHAPES[type_]
    assert PAYLOAD_FIELDS[type_] == (set(shape.required), set(shape.optional))


@pytest.mark.parametrize("type_", sorted(SHAPES))
def test_what_the_schema_takes_the_server_takes(type_: str) -> None:
    body = {"events": [raw(type_)]}
    jsonschema.validate(body, EVENTS_REQUEST)
    assert len(validate_batch(body)) == 1


def test_a_server_side_type_is_outside_the_schema() -> None:
    forged = {"events": [{"type": "cache.hit", "ts": 1, "payload": {"key_kind": "plan"}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(forged, EVENTS_REQUEST)
    jsonschema.validate({"email": "ada@example.com"}, MAGIC_LINK_REQUEST)
    assert VALID  # the examples come from the analytics tests
