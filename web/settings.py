"""Configuration: environment variables, read once into one Settings object.

The README's configuration table lists every variable here. Secrets (API keys) come from the
environment file the deploy writes from AWS SSM Parameter Store (ops/).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None  # DATABASE_URL; None → embedded PostgreSQL 16
    home: Path = Path("var")  # OMNITUTOR_HOME: embedded database and local files
    host: str = "127.0.0.1"  # OMNITUTOR_HOST
    port: int = 8790  # OMNITUTOR_PORT
    dev_http: bool = False  # OMNITUTOR_DEV_HTTP: plain-http development (cookie not Secure)
    max_body_bytes: int = 64 * 1024  # OMNITUTOR_MAX_BODY_BYTES
    log_level: str = "info"  # OMNITUTOR_LOG_LEVEL
    log_format: str = "auto"  # OMNITUTOR_LOG_FORMAT: json | console | auto (json off a tty)
    pool_max: int = 10  # OMNITUTOR_POOL_MAX: database connections per process
    session_days: int = 30  # OMNITUTOR_SESSION_DAYS: session inactivity expiry
    sse_heartbeat_s: float = 15.0  # OMNITUTOR_SSE_HEARTBEAT_S
    daily_cap_usd: float = 50.0  # OMNITUTOR_DAILY_CAP_USD: spend cap per UTC day
    projections_poll_s: float = 0.5  # OMNITUTOR_PROJECTIONS_POLL_S: runner's fallback poll

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        return cls(
            database_url=e.get("DATABASE_URL") or None,
            home=Path(e.get("OMNITUTOR_HOME") or "var"),
            host=e.get("OMNITUTOR_HOST") or "127.0.0.1",
            port=_int(e, "OMNITUTOR_PORT", 8790),
            dev_http=_flag(e.get("OMNITUTOR_DEV_HTTP")),
            max_body_bytes=_int(e, "OMNITUTOR_MAX_BODY_BYTES", 64 * 1024),
            log_level=(e.get("OMNITUTOR_LOG_LEVEL") or "info").lower(),
            log_format=(e.get("OMNITUTOR_LOG_FORMAT") or "auto").lower(),
            pool_max=_int(e, "OMNITUTOR_POOL_MAX", 10),
            session_days=_int(e, "OMNITUTOR_SESSION_DAYS", 30),
            sse_heartbeat_s=_float(e, "OMNITUTOR_SSE_HEARTBEAT_S", 15.0),
            daily_cap_usd=_float(e, "OMNITUTOR_DAILY_CAP_USD", 50.0),
            projections_poll_s=_float(e, "OMNITUTOR_PROJECTIONS_POLL_S", 0.5),
        )
