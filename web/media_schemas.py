"""JSON Schemas of visualize, animate and makeme (docs/assets.md), for the OpenAPI document.

Built from the rules in code where they exist (the make-me outputs, the request length).
"""

from __future__ import annotations

from commands.handlers.media import MAX_REQUEST_CHARS
from commands.providers import MAKEME_OUTPUTS
from web.api_schemas import ULID, Schema

BEAT_ASSET_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["beat_ord"],
    "properties": {
        "beat_ord": {"type": "integer", "minimum": 1, "maximum": 100},
        "request": {"type": ["string", "null"], "maxLength": MAX_REQUEST_CHARS},
    },
}

_ASSET = {"asset_id": ULID, "url": {"type": "string"}}

VISUALIZE_ANSWER: Schema = {
    "type": "object",
    "required": ["asset_id", "url", "kind"],
    "properties": {**_ASSET, "kind": {"type": "string", "enum": ["svg"]}},
}

ANIMATE_ANSWER: Schema = {
    "type": "object",
    "required": ["asset_id", "url", "kind", "spec"],
    "properties": {
        **_ASSET,
        "kind": {"type": "string", "enum": ["simulation"]},
        "spec": {
            "type": "object",
            "description": "parameters, state, update expressions, dt, steps, plot "
            "(commands/simulation.py)",
            "required": ["title", "parameters", "state", "update", "dt", "steps", "plot"],
        },
    },
}

MAKEME_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["output"],
    "properties": {"output": {"type": "string", "enum": list(MAKEME_OUTPUTS)}},
}

MAKEME_ANSWER: Schema = {
    "type": "object",
    "required": ["asset_id", "url", "output", "content"],
    "properties": {
        **_ASSET,
        "output": {"type": "string", "enum": list(MAKEME_OUTPUTS)},
        "content": {"type": "object", "description": "one shape per output (docs/assets.md)"},
    },
}
