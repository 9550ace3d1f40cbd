"""Magic link end to end: issue, consume, rotate, link or merge; races; no enumeration; SES."""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from commands.accounts import safe_next, validate_email
from commands.errors import InvalidInput
from tests.accounts_kit import eventually, latest_link, library, plan, running, student, token_of

MOTO_ACCOUNT = "123456789012"  # the account moto serves by default


def counts(db_url: str) -> tuple[int, ...]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users WHERE email IS NOT NULL),"
            " (SELECT count(*) FROM sessions WHERE token_hash IS NOT NULL),"
            " (SELECT count(*) FROM magic_links WHERE consumed_at IS NOT NULL),"
            " (SELECT count(*) FROM events WHERE type = 'lesson.transferred')"
        ).fetchone()
    assert row is not None
    return tuple(row)


def ask_link(client: httpx.Client, email: str) -> httpx.Response:
    return client.post("/v1/auth/magic-link", json={"email": email})


def test_link_consume_rotate_and_a_second_device_sees_the_library(
    db_url: str, tmp_path: Path
) -> None:
    with running(db_url, tmp_path) as base, student(base) as laptop, student(base) as phone:
        on_laptop = plan(laptop, "waves on a string")
        r = ask_link(laptop, "Ada@Example.com ")
        assert r.status_code == 202, r.text
        link = latest_link(tmp_path, "ada@example.com")
        assert link.startswith("http://127.0.0.1:8790/v1/auth/consume?token=")
        token = token_of(link)
        with psycopg.connect(db_url) as conn:  # only the token's sha256 is stored
            stored = conn.execute("SELECT token FROM magic_links").fetchall()
        assert stored == [(hashlib.sha256(token.encode()).hexdigest(),)]
        old_cookie = laptop.cookies["ot_session"]

        r = laptop.get("/v1/auth/consume", params={"token": token, "next": "/library?x=1"})
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/library?x=1"
        assert laptop.cookies["ot_session"] != old_cookie
        stale = httpx.get(base + "/v1/lessons", cookies={"ot_session": old_cookie})
        assert stale.status_code == 401
        assert eventually(lambda: library(laptop), lambda ids: ids == [on_laptop]) == [on_laptop]

        # The phone's anonymous work moves into the account when it signs in with the address.
        on_phone = plan(phone, "standing waves")
        assert ask_link(phone, "ada@example.com").status_code == 202
        r = phone.get(
            "/v1/auth/consume", params={"token": token_of(latest_link(tmp_path, "ada@example.com"))}
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/"
        both = {on_laptop, on_phone}
        assert set(eventually(lambda: library(phone), lambda ids: set(ids) == both)) == both
        assert set(eventually(lambda: library(laptop), lambda ids: set(ids) == both)) == both
        # The phone's session belongs to the account now; its lesson reads there too.
        assert phone.get(f"/v1/lesson/{on_phone}").status_code == 200
        assert laptop.get(f"/v1/lesson/{on_phone}").status_code == 200
    with psycopg.connect(db_url) as conn:
        users = conn.execute(
            "SELECT email, deleted_at IS NOT NULL, merged_into IS NOT NULL FROM users ORDER BY id"
        ).fetchall()
        transferred = conn.execute(
            "SELECT lesson_id FROM events WHERE type = 'lesson.transferred'"
        ).fetchall()
    assert sorted(users, key=str) == sorted(
        [("ada@example.com", False, False), (None, True, True)], key=str
    )
    assert transferred == [(on_phone,)]


def test_two_clicks_racing_exactly_one_wins(db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as base, student(base) as client:
        assert ask_link(client, "race@example.com").status_code == 202
        token = token_of(latest_link(tmp_path, "race@example.com"))
        cookies = dict(client.cookies)
        start = threading.Barrier(8)
        statuses: list[int] = []

        def click() -> None:
            start.wait()
            r = httpx.get(base + "/v1/auth/consume", params={"token": token}, cookies=cookies)
            statuses.append(r.status_code)

        threads = [threading.Thread(target=click) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(statuses) == [303] + [401] * 7
    assert counts(db_url)[:3] == (1, 1, 1)


@pytest.mark.parametrize("case", ["expired", "reused", "unknown", "malformed"])
def test_a_bad_token_is_unauthorized_and_changes_nothing(
    db_url: str, tmp_path: Path, case: str
) -> None:
    with running(db_url, tmp_path) as base, student(base) as client:
        assert ask_link(client, "late@example.com").status_code == 202
        token = token_of(latest_link(tmp_path, "late@example.com"))
        if case == "expired":
            with psycopg.connect(db_url) as conn:
                conn.execute("UPDATE magic_links SET expires_at = now() - interval '1 second'")
        elif case == "reused":
            assert client.get("/v1/auth/consume", params={"token": token}).status_code == 303
        elif case == "unknown":
            token = "A" * 43
        else:
            token = "not a token!"
        before, cookie = counts(db_url), client.cookies["ot_session"]
        r = client.get("/v1/auth/consume", params={"token": token})
        assert r.status_code == 401
        body = r.json()
        assert body["ok"] is False
        assert body["code"] == "unauthorized"
        assert "link" in body["message"]
        assert body["trace_id"].startswith("req_")
        assert counts(db_url) == before
        assert client.cookies["ot_session"] == cookie
        assert client.get("/v1/lessons").status_code == 200  # the session still works


def test_known_and_unknown_addresses_get_the_same_answer(db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as base, student(base) as owner, student(base) as stranger:
        assert ask_link(owner, "known@example.com").status_code == 202
        owner.get(
            "/v1/auth/consume",
            params={"token": token_of(latest_link(tmp_path, "known@example.com"))},
        )

        def answer(email: str) -> tuple[int, dict[str, Any], float]:
            started = time.perf_counter()
            r = ask_link(stranger, email)
            elapsed = time.perf_counter() - started
            body = r.json()
            del body["trace_id"]
            return r.status_code, body, elapsed

        known = [answer("known@example.com") for _ in range(4)]
        unknown = [answer(f"nobody{i}@example.com") for i in range(4)]
    assert {(s, str(b)) for s, b, _ in known} == {(s, str(b)) for s, b, _ in unknown}
    assert known[0][0] == 202
    # The same work either way: a stored link and a mail per request.
    with psycopg.connect(db_url) as conn:
        per_address: dict[str, int] = dict(
            conn.execute("SELECT email, count(*) FROM magic_links GROUP BY email").fetchall()
        )
    assert per_address["known@example.com"] == 5
    assert all(per_address[f"nobody{i}@example.com"] == 1 for i in range(4))
    print(
        f"magic-link answer: known {statistics.median(t for *_, t in known) * 1000:.1f} ms, "
        f"unknown {statistics.median(t for *_, t in unknown) * 1000:.1f} ms (median of 4)"
    )


def test_the_link_is_rate_limited_per_address_and_per_ip(db_url: str, tmp_path: Path) -> None:
    with (
        running(
            db_url, tmp_path, limit_magic_link_email_per_hour=2, limit_magic_link_ip_per_hour=4
        ) as base,
        student(base) as client,
    ):
        statuses = [ask_link(client, "flood@example.com").status_code for _ in range(3)]
        assert statuses == [202, 202, 429]
        others = [ask_link(client, f"o{i}@example.com").status_code for i in range(3)]
        assert others == [202, 429, 429]  # 3 of the IP's 4 were counted, the refusal is not
        r = ask_link(client, "o9@example.com")
    assert r.json()["code"] == "over_quota"
    assert r.json()["scope"] == "ip"
    assert "retry-after" in r.headers
    with psycopg.connect(db_url) as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM rate_buckets WHERE scope = 'email'")]
    assert hashlib.sha256(b"flood@example.com").hexdigest() in keys
    assert not any("@" in k for k in keys)  # no address is stored in rate_buckets


def test_signed_in_users_get_the_signed_in_limits(db_url: str, tmp_path: Path) -> None:
    with (
        running(db_url, tmp_path, limit_plan_anon_per_hour=1, limit_plan_user_per_hour=3) as base,
        student(base) as client,
    ):
        plan(client)
        assert ask_link(client, "limits@example.com").status_code == 202
        client.get(
            "/v1/auth/consume",
            params={"token": token_of(latest_link(tmp_path, "limits@example.com"))},
        )
        for _ in range(3):
            plan(client)  # the per-user limit (3), not the exhausted anonymous one (1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "/"),
        ("/library", "/library"),
        ("/lesson/01H?x=1#y", "/lesson/01H?x=1#y"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("library", "/"),
        ("/a\nb", "/"),
    ],
)
def test_only_same_site_paths_are_followed(raw: str | None, expected: str) -> None:
    assert safe_next(raw) == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "email"),
        ({"email": 3}, "email"),
        ({"email": "no-at-sign"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"email": "x" * 250 + "@example.com"}, "email"),
        ({"email": "a@example.com", "extra": 1}, "extra"),
    ],
)
def test_bad_addresses_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_email(body)
    assert raised.value.field == field


def test_mail_goes_through_ses_when_configured(db_url: str, tmp_path: Path, aws: str) -> None:
    import boto3
    from moto.ses.models import ses_backends

    boto3.client("ses", region_name="us-east-1").verify_email_identity(
        EmailAddress="tutor@omnitutor.ai"
    )
    backend = ses_backends[MOTO_ACCOUNT]["us-east-1"]
    before = len(backend.sent_messages)
    with (
        running(
            db_url,
            tmp_path,
            mail_from="tutor@omnitutor.ai",
            mail_region="us-east-1",
            public_url="https://omnitutor.ai",
        ) as base,
        student(base) as client,
    ):
        assert ask_link(client, "ses@example.com").status_code == 202
        sent = backend.sent_messages[before:]
        assert len(sent) == 1
        assert sent[0].destinations["ToAddresses"] == ["ses@example.com"]
        assert sent[0].source == "tutor@omnitutor.ai"
        body = sent[0].body
        link = next(w for w in body.split() if w.startswith("https://omnitutor.ai/v1/auth/consume"))
        r = client.get("/v1/auth/consume", params={"token": token_of(link)})
        assert r.status_code == 303
    assert not (tmp_path / "outbox").exists()  # nothing went to the outbox


def test_a_link_sent_to_someone_else_never_moves_their_lessons(db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as base, student(base) as attacker, student(base) as victim:
        assert ask_link(attacker, "evil@example.com").status_code == 202
        token = token_of(latest_link(tmp_path, "evil@example.com"))
        attacker.get("/v1/auth/consume", params={"token": token})
        assert ask_link(attacker, "evil@example.com").status_code == 202
        lure = token_of(latest_link(tmp_path, "evil@example.com"))
        theirs = plan(victim, "my own homework")
        assert victim.get("/v1/auth/consume", params={"token": lure}).status_code == 303
        plan(attacker, "the attacker's own")
        seen = eventually(lambda: library(attacker), lambda ids: len(ids) == 1)
    assert theirs not in seen
    assert counts(db_url)[3] == 0  # no lesson.transferred
