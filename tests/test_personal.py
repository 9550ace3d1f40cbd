"""Forgettable payloads (eventstore/personal.py): the split and the merge, as invariants."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore import personal
from eventstore.events import (
    CLIENT_PERSONAL_FIELDS,
    ERASED_TEXT,
    EVENT_CLASSES,
    from_payload,
    personal_fields,
)
from eventstore.store import EventMeta, NewEvent, StoredEvent

PERSONAL_TYPES = sorted(
    [t for t, cls in EVENT_CLASSES.items() if cls.PERSONAL] + list(CLIENT_PERSONAL_FIELDS)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    type_=st.sampled_from([*PERSONAL_TYPES, "model_run.recorded", "session.start"]),
    payload=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    personal_values=st.lists(json_values, min_size=4, max_size=4),
)
def test_split_then_merge_gives_the_payload_back(
    type_: str, payload: dict[str, Any], personal_values: list[Any]
) -> None:
    for name, value in zip(personal_fields(type_), personal_values, strict=False):
        payload[name] = value
    event = NewEvent(type_, payload, EventMeta(user_id="u"))
    sealed = personal.seal([event], ["lesson"], ["u"])
    public = sealed.payloads[0]
    assert not set(public) & set(personal_fields(type_))  # nothing personal goes to the log
    stored = StoredEvent(event.id, None, "lesson", 1, None, type_, 1, public, {}, 0)
    assert personal.reveal([stored], sealed.personal)[0].payload == payload
    rows = sealed.rows
    assert all(r.lesson_id == "lesson" and r.user_id is None for r in rows)


def test_session_level_personal_data_belongs_to_its_user_and_must_have_one() -> None:
    event = NewEvent("discovery.search", {"query": "springs"}, EventMeta(user_id="u"))
    (row,) = personal.seal([event], [None], ["u"]).rows
    assert (row.lesson_id, row.user_id, dict(row.fields)) == (None, "u", {"query": "springs"})
    with pytest.raises(personal.Unowned):
        personal.seal([event], [None], [None])


@pytest.mark.parametrize("type_", sorted(t for t, cls in EVENT_CLASSES.items() if cls.PERSONAL))
def test_a_forgotten_event_still_reads_as_a_well_formed_event(type_: str) -> None:
    cls = EVENT_CLASSES[type_]
    required = {
        f.name: _sample(str(f.type))
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.name not in cls.PERSONAL
    }
    event = from_payload(type_, cls.VERSION, required)
    for name in cls.PERSONAL:
        value = getattr(event, name)
        assert value in (ERASED_TEXT, {}, None)


def _sample(annotation: str) -> Any:
    if annotation.startswith("int"):
        return 1
    if annotation.startswith("bool"):
        return False
    if annotation.startswith(("JSON", "dict")):
        return {}
    return "x"
