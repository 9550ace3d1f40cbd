"""The served app runs the projections, and /v1/readyz reports a stopped one."""

from __future__ import annotations

import httpx
import orjson
import psycopg

from eventstore.ids import new_id
from tests.conditions import wait_for
from tests.test_spend import cli


def wait_for_readyz(client: httpx.Client, status: int, deadline_s: float = 15) -> httpx.Response:
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(client.get("/v1/readyz"))
        return answers[-1].status_code == status

    wait_for(answered, deadline_s, 0.05, f"readyz {status}")
    return answers[-1]


def test_readyz_reports_a_poison_event_until_it_is_skipped(live_server: str, db_url: str) -> None:
    with httpx.Client(base_url=live_server) as client:
        assert wait_for_readyz(client, 200).json()["checks"]["projections"] == "ok"
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "INSERT INTO events (id, type, payload_json) VALUES (%s, %s, %s::jsonb)",
                (new_id(), "model_run.recorded", orjson.dumps({"model": "x"}).decode()),
            )
        # The app's sequencer numbers it, its runner fails on it.
        r = wait_for_readyz(client, 500)
        assert r.status_code == 500, r.text
        check = r.json()["checks"]["projections"]
        assert check.startswith("model_runs failed at position 1: TypeError")
        status = cli(db_url, "projections", "status")
        assert status.returncode == 1
        assert "failed at position 1" in status.stdout
        skipped = cli(db_url, "projections", "skip", "model_runs", "--position", "1")
        assert skipped.returncode == 0, skipped.stderr
        assert wait_for_readyz(client, 200).status_code == 200
