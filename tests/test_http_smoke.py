from __future__ import annotations

import httpx


def test_healthz_and_session(live_server: str) -> None:
    with httpx.Client(base_url=live_server) as client:
        r = client.get("/v1/healthz")
        assert r.status_code == 200
        assert r.json()["ok"] is True
        r = client.post("/v1/session")
        assert r.status_code == 201, r.text
        assert "ot_session" in r.cookies
        r2 = client.post("/v1/session")
        assert r2.status_code == 200
        assert r2.json()["user_id"] == r.json()["user_id"]
