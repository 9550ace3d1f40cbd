"""Configuration: environment variables, read once into one Settings object.

The README's configuration table lists every variable here. Secrets (API keys) come from the
environment file the deploy writes from AWS SSM Parameter Store (ops/).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _decimal(env: Mapping[str, str], name: str, default: Decimal) -> Decimal:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise SystemExit(f"{name} must be a number of dollars >= 0, got {raw!r}")
    return value


def _networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    """Comma- or space-separated addresses or CIDRs ("127.0.0.1, 10.0.0.0/8, ::1")."""
    networks: list[IPNetwork] = []
    for item in (env.get(name) or "").replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SystemExit(f"{name}: {item!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma- or space-separated origins ("https://app.example, http://localhost:5173")."""
    origins: list[str] = []
    for item in (env.get(name) or "").replace(",", " ").split():
        scheme, sep, host = item.lower().rstrip("/").partition("://")
        if not sep or scheme not in {"http", "https"} or not host or "/" in host:
            raise SystemExit(f"{name}: {item!r} is not an origin like https://app.example")
        origins.append(f"{scheme}://{host}")
    return tuple(origins)


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
    # Guardrails (docs/guardrails.md): rate limits per hour, trusted proxies, the spend cap.
    limit_plan_anon_per_hour: int = 5  # OMNITUTOR_LIMIT_PLAN_ANON_PER_HOUR
    limit_ask_anon_per_hour: int = 60  # OMNITUTOR_LIMIT_ASK_ANON_PER_HOUR
    limit_plan_user_per_hour: int = 30  # OMNITUTOR_LIMIT_PLAN_USER_PER_HOUR
    limit_ask_user_per_hour: int = 300  # OMNITUTOR_LIMIT_ASK_USER_PER_HOUR
    limit_viz_anon_per_hour: int = 20  # OMNITUTOR_LIMIT_VIZ_ANON_PER_HOUR
    limit_viz_user_per_hour: int = 100  # OMNITUTOR_LIMIT_VIZ_USER_PER_HOUR
    trusted_proxies: tuple[IPNetwork, ...] = ()  # OMNITUTOR_TRUSTED_PROXIES
    # Origins besides the service's own allowed to send state-changing requests (CORS-free
    # cross-site writes are refused otherwise).
    allowed_origins: tuple[str, ...] = ()  # OMNITUTOR_ALLOWED_ORIGINS
    sse_max_per_session: int = 10  # OMNITUTOR_SSE_MAX_PER_SESSION: open streams per session
    sse_max_per_client: int = 100  # OMNITUTOR_SSE_MAX_PER_CLIENT: open streams per client IP
    daily_cap_usd: Decimal = Decimal(50)  # OMNITUTOR_DAILY_CAP_USD
    over_quota_forced: bool = False  # OT_OVER_QUOTA=1: refuse new generations from start-up
    # Lessons (docs/lessons.md): the model provider, generation and the SSE stream.
    provider: str = "offline"  # OMNITUTOR_PROVIDER: offline | anthropic (default: by key)
    anthropic_api_key: str | None = field(default=None, repr=False)  # ANTHROPIC_API_KEY
    anthropic_base_url: str | None = None  # ANTHROPIC_BASE_URL
    model_fast: str = "claude-haiku-4-5"  # OMNITUTOR_MODEL_FAST
    model_streaming: str = "claude-sonnet-4-6"  # OMNITUTOR_MODEL_STREAMING
    model_deep: str = "claude-opus-4-7"  # OMNITUTOR_MODEL_DEEP
    offline_pace_ms: int = 30  # OMNITUTOR_OFFLINE_PACE_MS: delay between offline tokens
    beat_partial_ms: int = 500  # OMNITUTOR_BEAT_PARTIAL_MS: coalescing window of beat.partial
    lease_ttl_s: float = 6.0  # OMNITUTOR_LEASE_TTL_S: a generation lease lapses after this
    # One statement renews all of a process's leases, so renewing often is cheap; it is how an
    # owner learns, within a second, that another process abandoned its lesson.
    lease_renew_s: float = 0.5  # OMNITUTOR_LEASE_RENEW_S
    supervisor_poll_s: float = 1.0  # OMNITUTOR_SUPERVISOR_POLL_S: look for orphaned lessons
    max_generations: int = 100  # OMNITUTOR_MAX_GENERATIONS: lessons one process generates
    sse_send_timeout_s: float = 10.0  # OMNITUTOR_SSE_SEND_TIMEOUT_S: drop a stalled reader
    sse_retry_ms: int = 1000  # OMNITUTOR_SSE_RETRY_MS: the stream's `retry:` field
    # Projections (docs/projections.md).
    projections_poll_s: float = 0.5  # OMNITUTOR_PROJECTIONS_POLL_S: runner's fallback poll
    # Assets and narration (docs/assets.md).
    assets_bucket: str | None = None  # OMNITUTOR_ASSETS_BUCKET; None → files under home/assets
    assets_prefix: str = ""  # OMNITUTOR_ASSETS_PREFIX: key prefix inside the bucket
    assets_base_url: str | None = None  # OMNITUTOR_ASSETS_BASE_URL: public base of asset URLs
    elevenlabs_api_key: str | None = field(default=None, repr=False)  # ELEVENLABS_API_KEY
    elevenlabs_base_url: str | None = None  # ELEVENLABS_BASE_URL
    tts_voice_id: str = "21m00Tcm4TlvDq8ikWAM"  # OMNITUTOR_TTS_VOICE_ID
    tts_model: str = "eleven_flash_v2_5"  # OMNITUTOR_TTS_MODEL
    tts_timeout_s: float = 30.0  # OMNITUTOR_TTS_TIMEOUT_S: one synthesis call
    tts_plan_wait_s: float = 3.0  # OMNITUTOR_TTS_PLAN_WAIT_S: plan answer waits for beat 1's clip
    # Accounts and personal data (docs/accounts.md, docs/privacy.md).
    public_url: str = "http://127.0.0.1:8790"  # OMNITUTOR_PUBLIC_URL: links in mail start so
    mail_from: str | None = None  # OMNITUTOR_MAIL_FROM: SES sender; unset → local outbox
    mail_region: str | None = None  # OMNITUTOR_MAIL_REGION (or AWS_REGION): SES region
    magic_link_ttl_min: int = 15  # OMNITUTOR_MAGIC_LINK_TTL_MIN
    limit_magic_link_ip_per_hour: int = 10  # OMNITUTOR_LIMIT_MAGIC_LINK_IP_PER_HOUR
    limit_magic_link_email_per_hour: int = 5  # OMNITUTOR_LIMIT_MAGIC_LINK_EMAIL_PER_HOUR
    session_idle_min: int = 30  # OMNITUTOR_SESSION_IDLE_MIN: a quiet session is ended
    purge_after_days: int = 30  # OMNITUTOR_PURGE_AFTER_DAYS: hard delete this long after
    error_events_per_s: int = 50  # OMNITUTOR_ERROR_EVENTS_PER_S: `error` events per process

    @property
    def mail_via_ses(self) -> bool:
        """Mail goes through Amazon SES when a sender and a region are configured."""
        return bool(self.mail_from and self.mail_region)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()  # the defaults, written once: in the fields above
        return cls(
            database_url=e.get("DATABASE_URL") or None,
            home=Path(e.get("OMNITUTOR_HOME") or d.home),
            host=e.get("OMNITUTOR_HOST") or d.host,
            port=_int(e, "OMNITUTOR_PORT", d.port),
            dev_http=_flag(e.get("OMNITUTOR_DEV_HTTP")),
            max_body_bytes=_int(e, "OMNITUTOR_MAX_BODY_BYTES", d.max_body_bytes),
            log_level=(e.get("OMNITUTOR_LOG_LEVEL") or d.log_level).lower(),
            log_format=(e.get("OMNITUTOR_LOG_FORMAT") or d.log_format).lower(),
            pool_max=_int(e, "OMNITUTOR_POOL_MAX", d.pool_max),
            session_days=_int(e, "OMNITUTOR_SESSION_DAYS", d.session_days),
            sse_heartbeat_s=_float(e, "OMNITUTOR_SSE_HEARTBEAT_S", d.sse_heartbeat_s),
            limit_plan_anon_per_hour=_int(
                e, "OMNITUTOR_LIMIT_PLAN_ANON_PER_HOUR", d.limit_plan_anon_per_hour
            ),
            limit_ask_anon_per_hour=_int(
                e, "OMNITUTOR_LIMIT_ASK_ANON_PER_HOUR", d.limit_ask_anon_per_hour
            ),
            limit_plan_user_per_hour=_int(
                e, "OMNITUTOR_LIMIT_PLAN_USER_PER_HOUR", d.limit_plan_user_per_hour
            ),
            limit_ask_user_per_hour=_int(
                e, "OMNITUTOR_LIMIT_ASK_USER_PER_HOUR", d.limit_ask_user_per_hour
            ),
            trusted_proxies=_networks(e, "OMNITUTOR_TRUSTED_PROXIES"),
            allowed_origins=_origins(e, "OMNITUTOR_ALLOWED_ORIGINS"),
            sse_max_per_session=_int(e, "OMNITUTOR_SSE_MAX_PER_SESSION", d.sse_max_per_session),
            sse_max_per_client=_int(e, "OMNITUTOR_SSE_MAX_PER_CLIENT", d.sse_max_per_client),
            daily_cap_usd=_decimal(e, "OMNITUTOR_DAILY_CAP_USD", d.daily_cap_usd),
            over_quota_forced=_flag(e.get("OT_OVER_QUOTA")),
            provider=_provider(e),
            anthropic_api_key=e.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=e.get("ANTHROPIC_BASE_URL") or None,
            model_fast=e.get("OMNITUTOR_MODEL_FAST") or d.model_fast,
            model_streaming=e.get("OMNITUTOR_MODEL_STREAMING") or d.model_streaming,
            model_deep=e.get("OMNITUTOR_MODEL_DEEP") or d.model_deep,
            offline_pace_ms=_int(e, "OMNITUTOR_OFFLINE_PACE_MS", d.offline_pace_ms),
            beat_partial_ms=_int(e, "OMNITUTOR_BEAT_PARTIAL_MS", d.beat_partial_ms),
            lease_ttl_s=_float(e, "OMNITUTOR_LEASE_TTL_S", d.lease_ttl_s),
            lease_renew_s=_float(e, "OMNITUTOR_LEASE_RENEW_S", d.lease_renew_s),
            supervisor_poll_s=_float(e, "OMNITUTOR_SUPERVISOR_POLL_S", d.supervisor_poll_s),
            max_generations=_int(e, "OMNITUTOR_MAX_GENERATIONS", d.max_generations),
            sse_send_timeout_s=_float(e, "OMNITUTOR_SSE_SEND_TIMEOUT_S", d.sse_send_timeout_s),
            sse_retry_ms=_int(e, "OMNITUTOR_SSE_RETRY_MS", d.sse_retry_ms),
            projections_poll_s=_float(e, "OMNITUTOR_PROJECTIONS_POLL_S", d.projections_poll_s),
            limit_viz_anon_per_hour=_int(
                e, "OMNITUTOR_LIMIT_VIZ_ANON_PER_HOUR", d.limit_viz_anon_per_hour
            ),
            limit_viz_user_per_hour=_int(
                e, "OMNITUTOR_LIMIT_VIZ_USER_PER_HOUR", d.limit_viz_user_per_hour
            ),
            assets_bucket=e.get("OMNITUTOR_ASSETS_BUCKET") or None,
            assets_prefix=_prefix(e.get("OMNITUTOR_ASSETS_PREFIX") or d.assets_prefix),
            assets_base_url=(e.get("OMNITUTOR_ASSETS_BASE_URL") or "").rstrip("/") or None,
            elevenlabs_api_key=e.get("ELEVENLABS_API_KEY") or None,
            elevenlabs_base_url=e.get("ELEVENLABS_BASE_URL") or None,
            tts_voice_id=e.get("OMNITUTOR_TTS_VOICE_ID") or d.tts_voice_id,
            tts_model=e.get("OMNITUTOR_TTS_MODEL") or d.tts_model,
            tts_timeout_s=_float(e, "OMNITUTOR_TTS_TIMEOUT_S", d.tts_timeout_s),
            tts_plan_wait_s=_float(e, "OMNITUTOR_TTS_PLAN_WAIT_S", d.tts_plan_wait_s),
            public_url=(e.get("OMNITUTOR_PUBLIC_URL") or d.public_url).rstrip("/"),
            mail_from=e.get("OMNITUTOR_MAIL_FROM") or d.mail_from,
            mail_region=(
                e.get("OMNITUTOR_MAIL_REGION")
                or e.get("AWS_REGION")
                or e.get("AWS_DEFAULT_REGION")
                or d.mail_region
            ),
            magic_link_ttl_min=_int(e, "OMNITUTOR_MAGIC_LINK_TTL_MIN", d.magic_link_ttl_min),
            limit_magic_link_ip_per_hour=_int(
                e, "OMNITUTOR_LIMIT_MAGIC_LINK_IP_PER_HOUR", d.limit_magic_link_ip_per_hour
            ),
            limit_magic_link_email_per_hour=_int(
                e, "OMNITUTOR_LIMIT_MAGIC_LINK_EMAIL_PER_HOUR", d.limit_magic_link_email_per_hour
            ),
            session_idle_min=_int(e, "OMNITUTOR_SESSION_IDLE_MIN", d.session_idle_min),
            purge_after_days=_int(e, "OMNITUTOR_PURGE_AFTER_DAYS", d.purge_after_days),
            error_events_per_s=_int(e, "OMNITUTOR_ERROR_EVENTS_PER_S", d.error_events_per_s),
        )


def _provider(env: Mapping[str, str]) -> str:
    """OMNITUTOR_PROVIDER, or anthropic when an API key is set and offline otherwise."""
    has_key = bool(env.get("ANTHROPIC_API_KEY"))
    kind = (env.get("OMNITUTOR_PROVIDER") or ("anthropic" if has_key else "offline")).lower()
    if kind not in {"offline", "anthropic"}:
        raise SystemExit(f"OMNITUTOR_PROVIDER must be offline or anthropic, got {kind!r}")
    if kind == "anthropic" and not has_key:
        raise SystemExit("OMNITUTOR_PROVIDER=anthropic needs ANTHROPIC_API_KEY")
    return kind


def _prefix(raw: str) -> str:
    """A key prefix ends with "/" (or is empty), so "audio" and "audio/" mean the same."""
    stripped = raw.strip().strip("/")
    return f"{stripped}/" if stripped else ""
