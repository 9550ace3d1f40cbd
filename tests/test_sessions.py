"""POST /v1/session: anonymous users, cookie flags, refresh, and tokens hashed at rest."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from commands.errors import Unauthorized
from commands.sessions import Authenticator, Principal, authenticate, open_session
from tests.conftest import make_settings
from tests.live import serve_app


def session_rows(db_url: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT id, user_id, token_hash FROM sessions").fetchall()


def test_new_session_creates_user_and_session_rows_and_sets_the_cookie(
    live_server: str, db_url: str
) -> None:
    r = httpx.post(live_server + "/v1/session")
    assert r.status_code == 201
    body = r.json()
    assert body["ok"] is True
    assert body["created"] is True
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("ot_session=")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= flags
    assert "samesite=lax" in cookie.lower()
    assert "path=/" in cookie.lower()
    assert "max-age=2592000" in cookie.lower()  # 30 days
    assert "secure" not in flags  # plain-http development settings
    rows = session_rows(db_url)
    assert [(s, u) for s, u, _ in rows] == [(body["session_id"], body["user_id"])]
    token = r.cookies["ot_session"]
    stored_hash = rows[0][2]
    assert stored_hash == hashlib.sha256(token.encode()).hexdigest()
    with psycopg.connect(db_url) as conn:
        dump = conn.execute("SELECT row_to_json(s)::text FROM sessions s").fetchone()
    assert dump is not None
    assert token not in dump[0]


def test_cookie_is_secure_unless_configured_for_plain_http(db_url: str) -> None:
    with serve_app(make_settings(dev_http=False), db_url) as base:
        r = httpx.post(base + "/v1/session")
    assert "; secure" in r.headers["set-cookie"].lower()


def test_a_valid_cookie_refreshes_the_same_user(live_server: str, db_url: str) -> None:
    with httpx.Client(base_url=live_server) as client:
        first = client.post("/v1/session").json()
        again = client.post("/v1/session")
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["user_id"] == first["user_id"]
    assert again.json()["session_id"] == first["session_id"]
    assert len(session_rows(db_url)) == 1


def test_an_unknown_or_expired_cookie_gets_a_new_anonymous_user(
    live_server: str, db_url: str
) -> None:
    with httpx.Client(base_url=live_server) as client:
        first = client.post("/v1/session").json()
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
        renewed = client.post("/v1/session").json()
    bogus = httpx.post(live_server + "/v1/session", cookies={"ot_session": "forged"}).json()
    assert len({first["user_id"], renewed["user_id"], bogus["user_id"]}) == 3


def test_client_meta_is_stored(live_server: str, db_url: str) -> None:
    r = httpx.post(live_server + "/v1/session", json={"client_meta": {"viewport": "390x844"}})
    assert r.status_code == 201
    with psycopg.connect(db_url) as conn:
        meta = conn.execute("SELECT client_meta_json FROM sessions").fetchone()
    assert meta == ({"viewport": "390x844"},)


@pytest.mark.anyio
async def test_requests_arriving_together_are_authenticated_by_one_statement(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    grants = [await open_session(pool, None, {}, 30) for _ in range(40)]
    tokens = [g.token for g in grants]
    with psycopg.connect(db_url) as conn:  # half were last seen two minutes ago
        conn.execute(
            "UPDATE sessions SET last_seen_at = now() - interval '2 minutes',"
            " expires_at = now() + interval '1 day' WHERE id = ANY(%s)",
            ([g.principal.session_id for g in grants[::2]],),
        )
    authenticator = Authenticator(pool, days=30, idle_min=30)
    asked = [*tokens, tokens[0], "not-a-token", None]
    answers = await asyncio.gather(
        *(authenticator.authenticate(t) for t in asked), return_exceptions=True
    )
    assert answers[:41] == [g.principal for g in grants] + [grants[0].principal]
    assert [type(a) for a in answers[41:]] == [Unauthorized, Unauthorized]
    assert authenticator.statements == 1
    # The same answers as one at a time, and the stale half's expiry slid back to 30 days.
    for token, grant in zip(tokens, grants, strict=True):
        assert await authenticate(pool, token) == grant.principal
    with psycopg.connect(db_url) as conn:
        short = conn.execute(
            "SELECT count(*) FROM sessions WHERE expires_at < now() + interval '29 days'"
        ).fetchone()
    assert short == (0,)


@pytest.mark.anyio
async def test_an_ended_visit_is_continued_by_a_new_one_of_the_same_user(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    grant = await open_session(pool, None, {}, 30)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE sessions SET ended_at = now() WHERE id = %s", (grant.principal.session_id,)
        )
    authenticator = Authenticator(pool)
    again = await authenticator.authenticate(grant.token)
    assert isinstance(again, Principal)
    assert again.user_id == grant.principal.user_id
    assert again.session_id != grant.principal.session_id
    assert await authenticator.authenticate(grant.token) == again  # the token moved with it
