"""`omnitutor privacy purge` and `omnitutor auth outbox`, run as real subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from commands.mailer import Message, OutboxMailer
from eventstore.ids import new_id
from eventstore.store import EventStore
from tests.lesson_log import append_lesson, simple_lesson, user_and_session

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


def omnitutor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "OMNITUTOR_LOG_LEVEL": "warning", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_purge_erases_only_users_deleted_long_enough_ago(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    store = EventStore(pool)
    old_user, old_session = await user_and_session(pool)
    new_user, new_session = await user_and_session(pool)
    await append_lesson(store, new_id(), old_session, simple_lesson(old_user, old_session))
    await append_lesson(store, new_id(), new_session, simple_lesson(new_user, new_session))
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE users SET deleted_at = now() - interval '31 days' WHERE id = %s", (old_user,)
        )
        conn.execute(
            "UPDATE users SET deleted_at = now() - interval '5 days' WHERE id = %s", (new_user,)
        )
    result = omnitutor({"DATABASE_URL": db_url}, "privacy", "purge", "--wait", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "1/1 users erased" in lines
    assert "has not applied the erasure yet" in lines[-2]  # no service runs projections here
    assert lines[-1].startswith("privacy purge: purged 1 users: 1 lessons erased, ")
    with psycopg.connect(db_url) as conn:
        purged = conn.execute("SELECT id FROM users WHERE purged_at IS NOT NULL").fetchall()
        left = conn.execute(
            "SELECT count(*) FROM personal_data WHERE lesson_id IN "
            "(SELECT lesson_id FROM events WHERE type = 'lesson.created' "
            " AND payload_json->>'user_id' = %s)",
            (new_user,),
        ).fetchone()
    assert purged == [(old_user,)]
    assert left is not None
    assert left[0] > 0  # deleted 5 days ago: kept until its 30 days are up


def test_the_outbox_prints_the_latest_links(tmp_path: Path) -> None:
    import asyncio

    mailer = OutboxMailer(tmp_path / "outbox")
    for i in range(3):
        link = f"http://127.0.0.1:8790/v1/auth/consume?token=t{i}"
        asyncio.run(mailer.send(Message(f"s{i}@example.com", "Sign in", link, link)))
    result = omnitutor(
        {"OMNITUTOR_HOME": str(tmp_path), "DATABASE_URL": "postgresql://unused"},
        "auth",
        "outbox",
        "--limit",
        "2",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert "to s2@example.com" in lines[0]
    assert lines[1].strip().endswith("token=t2")
    assert "to s1@example.com" in lines[2]
    assert all((tmp_path / "outbox").iterdir())
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "outbox").iterdir())
