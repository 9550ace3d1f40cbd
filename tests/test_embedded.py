"""With no DATABASE_URL the service runs on an embedded PostgreSQL 16 under OMNITUTOR_HOME."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pgserver
import pytest

from tests.conditions import free_port, seconds_until

pytestmark = pytest.mark.slow

PSQL = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"


def embedded_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(OMNITUTOR_HOME=str(home), OMNITUTOR_DEV_HTTP="1", OMNITUTOR_LOG_FORMAT="json")
    return env


def wait_until_healthy(base: str, proc: subprocess.Popen[bytes], deadline_s: float) -> float:
    def healthy() -> bool:
        assert proc.poll() is None, "server exited early"
        try:
            return httpx.get(base + "/v1/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    return seconds_until(healthy, deadline_s, "healthz")


def test_serve_without_database_url_uses_the_embedded_server(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "serve", "--port", str(port)],
            env=embedded_env(tmp_path),
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, proc, deadline_s=20)
        r = httpx.post(base + "/v1/session")
        assert r.status_code == 201, r.text
        ready = httpx.get(base + "/v1/readyz")
        assert ready.status_code == 200, ready.text
        assert (tmp_path / "pgdata" / "PG_VERSION").read_text().strip() == "16"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists(), "embedded server left running"


def test_db_url_prints_a_url_psql_can_use(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    url = subprocess.run(
        [sys.executable, "-m", "ops.cli", "db", "url"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        out = subprocess.run(
            [str(PSQL), url, "-tAc", "SELECT current_database()"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert out == "omnitutor"
    finally:
        subprocess.run(
            [sys.executable, "-m", "ops.cli", "db", "stop"],
            env=env,
            check=True,
            capture_output=True,
        )
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()
