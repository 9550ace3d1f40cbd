"""structlog set-up: one JSON line per event with the contract's §9 fields.

Request context (trace_id, path, session_id, user_id, lesson_id …) is bound to contextvars
by the request middleware, so every line logged while serving a request carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40}


def _rename_event_to_msg(
    _logger: object, _name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    event_dict["msg"] = event_dict.pop("event", "")
    return event_dict


# The contract's log dictionary (§9), in its order: every JSON line carries every key,
# null when it does not apply, so a query never has to ask whether a field exists.
CONTRACT_FIELDS = (
    "ts",
    "level",
    "msg",
    "trace_id",
    "session_id",
    "user_id",
    "lesson_id",
    "beat_id",
    "path",
    "status",
    "latency_ms",
    "model",
    "cost_usd",
    "cache",
)
# §9 spells levels debug | info | warn | error; the logging module has more names.
_CONTRACT_LEVEL = {"warning": "warn", "critical": "error", "exception": "error", "fatal": "error"}


def contract_fields(
    _logger: object, _name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """§9's keys first and always present (null when absent), levels in §9's words.

    Runs after the event has been renamed to `msg`; other keys follow in their own order.
    """
    if "event" in event_dict and "msg" not in event_dict:
        event_dict["msg"] = event_dict.pop("event")
    level = str(event_dict.get("level") or "info").lower()
    event_dict["level"] = _CONTRACT_LEVEL.get(level, level)
    ordered = {key: event_dict.pop(key, None) for key in CONTRACT_FIELDS}
    ordered.update(event_dict)
    return ordered


class _CurrentStderr:
    """Writes to whatever sys.stderr is now, not the object it was at configuration time."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out: TextIO | _CurrentStderr = stream or _CurrentStderr()
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.types.Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        shared.extend([_rename_event_to_msg, contract_fields])
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]  # duck-typed
        # Not cached: module-level loggers must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )
