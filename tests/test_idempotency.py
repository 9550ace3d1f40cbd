"""Idempotency keys against the real database: claim before work, replay, conflicts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from commands import idempotency
from commands.errors import Conflict, InvalidInput
from commands.idempotency import Claim, ClaimLost, StoredResponse
from commands.sessions import open_session
from eventstore.database import open_pool
from eventstore.events import LessonCreated
from eventstore.ids import new_id
from eventstore.store import EventMeta, EventStore, NewEvent

pytestmark = pytest.mark.anyio


async def new_user(pool: AsyncConnectionPool[Any]) -> str:
    return (await open_session(pool, None, {}, 30)).principal.user_id


def test_canonical_body_ignores_key_order_and_whitespace() -> None:
    a = b'{"topic": "SHM", "intent": {"time": "30 min", "why": "homework"}}'
    b = b'{"intent":{"why":"homework","time":"30 min"},"topic":"SHM"}'
    assert idempotency.request_hash("POST /v1/plan", a) == idempotency.request_hash(
        "POST /v1/plan", b
    )
    assert idempotency.request_hash("POST /v1/plan", a) != idempotency.request_hash(
        "POST /v1/plan", b'{"topic": "SHM!"}'
    )
    # The same body on another route is another request.
    assert idempotency.request_hash("POST /v1/plan", a) != idempotency.request_hash(
        "POST /v1/lesson/x/adjust", a
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (None, "required"),
        ("", "required"),
        ("x" * 256, "at most 255"),
        ("has space", "visible ASCII"),
        ("naïve", "visible ASCII"),
    ],
)
def test_bad_keys_are_invalid_input_naming_the_header(raw: str | None, problem: str) -> None:
    with pytest.raises(InvalidInput) as info:
        idempotency.validate_key(raw)
    assert info.value.field == "Idempotency-Key"
    assert problem in info.value.message


async def test_claim_conflict_complete_replay_release(pool: AsyncConnectionPool[Any]) -> None:
    user = await new_user(pool)
    h1, h2 = "a" * 64, "b" * 64
    first = await idempotency.claim(pool, user, "k1", h1)
    assert isinstance(first, Claim)

    with pytest.raises(Conflict) as running:
        await idempotency.claim(pool, user, "k1", h1)
    assert running.value.recoverable is True
    assert running.value.retry_after_ms is not None
    assert running.value.retry_after_ms > 0

    with pytest.raises(Conflict) as mismatch:
        await idempotency.claim(pool, user, "k1", h2)
    assert mismatch.value.recoverable is False

    answer = StoredResponse(201, b'{"ok":true,"n":1}', "application/json")
    assert await idempotency.complete(pool, first, answer) is True
    assert await idempotency.claim(pool, user, "k1", h1) == answer
    with pytest.raises(Conflict) as after:
        await idempotency.claim(pool, user, "k1", h2)
    assert after.value.recoverable is False
    # A finished claim can no longer be released or completed again.
    assert await idempotency.release(pool, first) is False
    assert await idempotency.complete(pool, first, answer) is False

    # A released claim frees the key for a retry that runs.
    second = await idempotency.claim(pool, user, "k2", h1)
    assert isinstance(second, Claim)
    assert await idempotency.release(pool, second) is True
    assert isinstance(await idempotency.claim(pool, user, "k2", h1), Claim)


async def test_keys_are_scoped_per_user(pool: AsyncConnectionPool[Any]) -> None:
    alice, bob = await new_user(pool), await new_user(pool)
    mine = await idempotency.claim(pool, alice, "same-key", "a" * 64)
    assert isinstance(mine, Claim)
    await idempotency.complete(pool, mine, StoredResponse(200, b'{"who":"alice"}', "x/y"))
    theirs = await idempotency.claim(pool, bob, "same-key", "b" * 64)
    assert isinstance(theirs, Claim)  # neither a conflict nor alice's answer


async def test_expired_keys_start_afresh_and_are_purged(pool: AsyncConnectionPool[Any]) -> None:
    user = await new_user(pool)
    old = await idempotency.claim(pool, user, "old", "a" * 64, ttl=timedelta(0))
    assert isinstance(old, Claim)
    await idempotency.complete(pool, old, StoredResponse(200, b"{}", "application/json"))
    # Expired: another request may use the key, and it runs.
    again = await idempotency.claim(pool, user, "old", "b" * 64, ttl=timedelta(0))
    assert isinstance(again, Claim)
    live = await idempotency.claim(pool, user, "live", "a" * 64)
    assert isinstance(live, Claim)
    assert await idempotency.purge_expired(pool) == 1
    assert await idempotency.purge_expired(pool) == 0
    with pytest.raises(Conflict):
        await idempotency.claim(pool, user, "live", "a" * 64)


async def test_a_dead_claim_is_taken_over_only_after_its_lease(
    pool: AsyncConnectionPool[Any],
) -> None:
    user = await new_user(pool)
    dead = await idempotency.claim(pool, user, "k", "a" * 64, lease=timedelta(0))
    assert isinstance(dead, Claim)
    with pytest.raises(Conflict) as other_request:
        await idempotency.claim(pool, user, "k", "b" * 64)
    assert other_request.value.recoverable is False
    heir = await idempotency.claim(pool, user, "k", "a" * 64)
    assert isinstance(heir, Claim)
    assert heir.token != dead.token
    # The dead claim's late answer cannot overwrite the heir's.
    assert await idempotency.complete(pool, dead, StoredResponse(200, b"{}", "a/b")) is False
    assert await idempotency.release(pool, dead) is False
    assert await idempotency.complete(pool, heir, StoredResponse(200, b"[1]", "a/b")) is True


async def test_a_renewed_claim_outlives_its_first_lease(pool: AsyncConnectionPool[Any]) -> None:
    user = await new_user(pool)
    owner = await idempotency.claim(pool, user, "k", "a" * 64, lease=timedelta(0))
    assert isinstance(owner, Claim)
    assert await idempotency.renew(pool, owner, lease=timedelta(minutes=1)) is True
    with pytest.raises(Conflict) as running:
        await idempotency.claim(pool, user, "k", "a" * 64)
    assert running.value.recoverable is True
    await idempotency.complete(pool, owner, StoredResponse(200, b"{}", "a/b"))
    assert await idempotency.renew(pool, owner) is False  # done: nothing left to renew


def lesson_events(user: str) -> list[NewEvent]:
    meta = EventMeta("req_test", user, new_id())
    created = LessonCreated(new_id(), user, "physics", "Waves", "ug", {})
    return [NewEvent.of(created, meta)]


async def test_the_answer_commits_with_the_events_or_not_at_all(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    user = await new_user(pool)
    answer = StoredResponse(200, b'{"lesson_id":"L1"}', "application/json")
    owner = await idempotency.claim(pool, user, "k", "a" * 64)
    assert isinstance(owner, Claim)

    async def record(conn: Any) -> None:
        await idempotency.complete_in(conn, owner, answer)

    first, second = new_id(), new_id()
    await store.append(first, lesson_events(user), expected_seq=0, in_transaction=record)
    assert await idempotency.claim(pool, user, "k", "a" * 64) == answer
    assert len(await store.read_lesson_page(first, 0, 10)) == 1

    # A claim lost to a retry (its lease ran out while the process stalled): the append
    # rolls back, so the work is never done twice.
    stalled = await idempotency.claim(pool, user, "k2", "a" * 64, lease=timedelta(0))
    assert isinstance(stalled, Claim)
    heir = await idempotency.claim(pool, user, "k2", "a" * 64)
    assert isinstance(heir, Claim)

    async def record_stalled(conn: Any) -> None:
        await idempotency.complete_in(conn, stalled, answer)

    with pytest.raises(ClaimLost):
        await store.append(
            second, lesson_events(user), expected_seq=0, in_transaction=record_stalled
        )
    assert await store.read_lesson_page(second, 0, 10) == []


async def test_concurrent_duplicates_claim_once(pool: AsyncConnectionPool[Any]) -> None:
    user = await new_user(pool)
    outcomes = await asyncio.gather(
        *(idempotency.claim(pool, user, "dup", "a" * 64) for _ in range(20)),
        return_exceptions=True,
    )
    claims = [o for o in outcomes if isinstance(o, Claim)]
    assert len(claims) == 1
    assert all(isinstance(o, Conflict) and o.recoverable for o in outcomes if o not in claims)
    answer = StoredResponse(200, b'{"done":true}', "application/json")
    await idempotency.complete(pool, claims[0], answer)
    replays = await asyncio.gather(
        *(idempotency.claim(pool, user, "dup", "a" * 64) for _ in range(20))
    )
    assert replays == [answer] * 20


# ---- interleavings ------------------------------------------------------------------------
# Each client claims, then finishes (its work succeeds or fails with a server error). Any
# interleaving of the clients' steps must behave like this model: one owner at a time, a
# finished answer replayed to the same request, a different request refused, a failure
# releasing the key.

Client = tuple[int, bool]  # (which body, work succeeds)


def model_outcome(state: Any, body: int) -> str:
    if state is None:
        return "claimed"
    kind, held_body = state[0], state[1]
    if held_body != body:
        return "mismatch"
    return "running" if kind == "in_flight" else "replay"


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[Client], list[int]]:
    clients = draw(st.lists(st.tuples(st.integers(0, 1), st.booleans()), min_size=2, max_size=5))
    steps = [i for i in range(len(clients)) for _ in range(2)]
    return clients, draw(st.permutations(steps))


async def run_schedule(db_url: str, user: str, clients: list[Client], order: list[int]) -> None:
    key = str(uuid.uuid4())
    hashes = ["a" * 64, "b" * 64]
    state: Any = None  # None | ("in_flight", body, owner) | ("done", body, answer)
    claims: dict[int, Claim] = {}
    started: set[int] = set()
    running: set[int] = set()  # clients whose work runs now (claimed, not finished)
    answers_stored = 0
    async with open_pool(db_url, max_size=2) as pool:
        for i in order:
            body, succeeds = clients[i]
            if i not in started:  # this client's first step: claim
                started.add(i)
                expected = model_outcome(state, body)
                try:
                    got = await idempotency.claim(pool, user, key, hashes[body])
                except Conflict as e:
                    actual = "running" if e.recoverable else "mismatch"
                else:
                    actual = "claimed" if isinstance(got, Claim) else "replay"
                    if isinstance(got, Claim):
                        # The database's word, checked against the work in hand: a claim
                        # granted while another client's work runs would run it twice.
                        assert not running, (clients, order, i, running)
                        running.add(i)
                        claims[i] = got
                        state = ("in_flight", body, i)
                    else:
                        assert state is not None
                        assert got == state[2]
                assert actual == expected, (clients, order, i)
            elif i in claims:  # second step of the owner: finish the work
                running.discard(i)
                if succeeds:
                    answer = StoredResponse(200, f'{{"by":{i}}}'.encode(), "application/json")
                    assert await idempotency.complete(pool, claims[i], answer)
                    answers_stored += 1
                    state = ("done", body, answer)
                else:
                    assert await idempotency.release(pool, claims[i])
                    state = None
    # Once an answer is stored, the key never runs work again: at most one answer per key.
    assert answers_stored <= 1, (clients, order)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=schedules())
def test_any_interleaving_matches_the_model(db_url: str, schedule: Any) -> None:
    clients, order = schedule

    async def go() -> None:
        async with open_pool(db_url, max_size=1) as pool:
            user = await new_user(pool)
        await run_schedule(db_url, user, clients, order)

    asyncio.run(go())
