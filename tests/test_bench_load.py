"""`omnitutor bench load` runs the whole student flow against a server it starts (issue 14).

A small run proves the command works end to end: a few students, a few seconds. It asserts
what was done and counted, never how fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_load_run_streams_lessons_and_counts_every_route(pg_admin_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": pg_admin_url}
    run = subprocess.run(
        [sys.executable, "-m", "ops.cli", "bench", "load", "--users", "3", "--seconds", "4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {
        m.group(1).strip(): [int(v.replace(",", "")) for v in m.group(2).split()[:5]]
        for m in re.finditer(
            r"^((?:POST|GET) \S+(?: \(to the end\))?)\s+([\d,\s.]+)$", run.stdout, re.MULTILINE
        )
    }
    # requests, ok, 404, 409, errors per route
    for route in ("POST /v1/session", "POST /v1/plan", "GET /v1/lesson/:id/stream (to the end)"):
        requests, ok, _missing, _conflict, errors = rows[route]
        assert requests >= 1, route
        assert ok == requests, (route, rows[route])
        assert errors == 0, (route, rows[route])
    # ask and adjust answer (or 404 until their routes land); either way none is an error.
    for route in ("POST /v1/lesson/:id/ask", "POST /v1/lesson/:id/adjust"):
        requests, ok, missing, conflict, errors = rows[route]
        assert requests >= 1, route
        assert ok + missing + conflict == requests, (route, rows[route])
        assert errors == 0, (route, rows[route])
    assert re.search(r"^delivery lag: commit → frame \(live\)\s+[\d,]+", run.stdout, re.MULTILINE)
    assert "lessons streamed to the end" in run.stderr.splitlines()[-1]
    assert "0 errors" in run.stderr.splitlines()[-1]
