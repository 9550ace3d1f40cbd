"""Daily spend: sums equal the model runs to the cent, the over-quota flag, report, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from eventstore.ids import new_id
from eventstore.store import EventMeta, EventStore, NewEvent
from projections import spend
from projections.model_runs import cost
from projections.reads import spend_by_day
from projections.runner import ProjectionRunner
from tests.lesson_log import run, scalar, scratch_pool

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent

runs = st.lists(
    st.tuples(
        st.sampled_from(["haiku-4-5", "sonnet-4-6", "opus-4-7", "offline"]),
        st.sampled_from(["plan", "beat", "ask", "moderation"]),
        st.decimals(min_value=0, max_value=3, places=5),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=runs)
async def test_spend_sums_equal_the_model_runs_to_the_cent(
    pg_admin_url: str, template_db: str, drawn: list[tuple[str, str, Decimal]]
) -> None:
    async with scratch_pool(pg_admin_url, template_db) as pool:
        store = EventStore(pool)
        meta = EventMeta(session_id="s")
        events = [
            NewEvent.of(run(model, float(c), purpose=purpose), meta) for model, purpose, c in drawn
        ]
        await store.append_unordered(events)
        await store.sequence()
        await ProjectionRunner(pool).catch_up()
        expected: dict[tuple[str, str], Decimal] = {}
        for model, purpose, c in drawn:
            expected[(model, purpose)] = expected.get((model, purpose), Decimal(0)) + cost(float(c))
        total = sum(expected.values(), Decimal(0))
        assert total == sum((c for _, _, c in drawn), Decimal(0))  # floats kept 5 places
        # A cap a cent above the total: not over quota; at the total: over quota.
        result = await spend.aggregate(pool, spend.default_days(), total + Decimal("0.01"))
        assert result.today_usd == total
        assert not result.over_quota
        assert not await spend.over_quota(pool)
        rows = await spend.report(pool, 2)
        assert {(r.model, r.purpose): r.cost_usd for r in rows} == expected
        assert sum(r.runs for r in rows) == len(drawn)
        assert sum(r.prompt_tokens for r in rows) == 100 * len(drawn)
        again = await spend.aggregate(pool, spend.default_days(), total)
        assert again.over_quota is True
        assert await spend.over_quota(pool)
        assert await spend.report(pool, 2) == rows  # recomputing a day changes nothing


async def test_days_are_utc_days_and_the_flag_clears(pool: AsyncConnectionPool[Any]) -> None:
    now = datetime.now(UTC)
    yesterday = now - timedelta(days=1)
    async with pool.connection() as conn:
        for ts, c in ((yesterday, "40.00000"), (now, "20.00000"), (now, "35.50000")):
            await conn.execute(
                "INSERT INTO model_runs (id, trace_id, model, purpose, prompt_tokens, "
                "completion_tokens, cost_usd, latency_ms, status, ts) "
                "VALUES (%s, 't', 'sonnet-4-6', 'beat', 1, 1, %s, 1, 'ok', %s)",
                (new_id(), c, ts),
            )
    result = await spend.aggregate(pool, spend.default_days(now), Decimal(50), now)
    assert [(d.day, d.cost_usd) for d in result.days] == [
        (yesterday.date(), Decimal(40)),
        (now.date(), Decimal("55.5")),
    ]
    assert result.over_quota is True  # today: 55.50 ≥ 50
    reason = await scalar(pool, "SELECT reason FROM service_flags WHERE name = 'over_quota'")
    assert "$55.50" in reason
    result = await spend.aggregate(pool, [now.date()], Decimal(100), now)
    assert result.over_quota is False
    assert await scalar(pool, "SELECT value FROM service_flags WHERE name = 'over_quota'") is False
    rows = await spend_by_day(pool, days=2, today=now.date())
    assert [(r.day, r.cost_usd) for r in rows] == [
        (now.date(), Decimal("55.5")),
        (yesterday.date(), Decimal(40)),
    ]


def cli(db_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": db_url, "OMNITUTOR_LOG_LEVEL": "warning", **env},
        timeout=60,
    )


def test_spend_cli(db_url: str) -> None:
    bad = cli(db_url, "spend", "aggregate", "--day", "yesterday")
    assert bad.returncode == 2
    assert "'yesterday' is not a date like 2026-05-10" in bad.stderr
    ok = cli(db_url, "spend", "aggregate", "--day", "2026-01-02", OMNITUTOR_DAILY_CAP_USD="0")
    assert ok.returncode == 0, ok.stderr
    assert "2026-01-02: 0 model × purpose rows" in ok.stderr
    assert "over_quota flag SET" in ok.stderr  # today's $0.00 is at a $0 cap
    report = cli(db_url, "spend", "report", "--days", "3")
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("day")
    status = cli(db_url, "projections", "status")
    assert status.returncode == 0, status.stderr
    assert "lessons" in status.stdout
    assert "model_runs" in status.stdout
    skip = cli(db_url, "projections", "skip", "lessons", "--position", "3")
    assert skip.returncode == 1
    assert "not failed" in skip.stderr


def test_spend_units_verify(tmp_path: Path) -> None:
    """The shipped units, with the venv path of this machine, pass systemd-analyze verify."""
    prod = "/home/ubuntu/omnitutor-app/.venv/bin/omnitutor"
    local = str(Path(sys.executable).parent / "omnitutor")
    for name in ("omnitutor-spend.service", "omnitutor-spend.timer"):
        text = (ROOT / "ops" / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace(prod, local))
    service = (ROOT / "ops" / "systemd" / "omnitutor-spend.service").read_text()
    assert f"ExecStart={prod} spend aggregate\n" in service
    timer = (ROOT / "ops" / "systemd" / "omnitutor-spend.timer").read_text()
    assert "OnCalendar=*-*-* 00:10:00 UTC\n" in timer
    assert "Unit=omnitutor-spend.service\n" in timer
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
