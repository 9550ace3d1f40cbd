"""structlog set-up: one JSON line per event with the contract's §9 fields.

Request context (trace_id, path, session_id, user_id, lesson_id …) is bound to contextvars
by the request middleware, so every line logged while serving a request carries it.

Libraries that log through the standard library (uvicorn, psycopg_pool) go through the same
processors and renderer (structlog's ProcessorFormatter on one root handler), so stderr
carries one format: JSON lines with `logger` naming the library, or the console renderer on a
terminal. `omnitutor serve` runs uvicorn with `log_config=None` so that it keeps this.
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


STDLIB_HANDLER = "omnitutor"  # the name of the root handler configure_logging installs


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out: TextIO | _CurrentStderr = stream or _CurrentStderr()
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    numeric_level = _LEVELS.get(level, logging.INFO)
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
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]  # duck-typed
        # Not cached: module-level loggers must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(out, numeric_level, shared, renderer)


def _route_stdlib_logging(
    out: TextIO | _CurrentStderr,
    level: int,
    shared: list[structlog.types.Processor],
    renderer: structlog.types.Processor,
) -> None:
    """One root handler rendering stdlib records with structlog's processors."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *shared,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(STDLIB_HANDLER)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == STDLIB_HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "psycopg", "psycopg.pool"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    # psycopg_pool logs every connection hand-out at info: only its warnings are news.
    logging.getLogger("psycopg").setLevel(max(level, logging.WARNING))
