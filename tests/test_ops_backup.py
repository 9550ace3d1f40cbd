"""Backups against a real PostgreSQL and moto's S3 server, through boto3 and the real CLI.

P0 acceptance test 12: trigger the backup, find the dump in S3, restore it into a scratch
database, and find every table intact: same rows, and the event log in the same order.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import boto3
import httpx
import psycopg
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from eventstore.migrations import grant_app_role
from eventstore.store import EventMeta, EventStore, NewEvent
from ops.backup import (
    LIFECYCLE_RULE_ID,
    BackupError,
    GzipReader,
    run_backup,
    table_rows,
    today_utc,
    transfer_config,
)
from ops.cli import main
from tests.conftest import make_settings
from tests.live import serve_app

LOG_COLUMNS = (
    "position, id, session_id, lesson_id, lesson_seq, insert_no, type, type_version, "
    "payload_json, metadata_json, ts"
)


@pytest.fixture(autouse=True)
def _unbind_cli_logging() -> Iterator[None]:
    """main() points structlog at this test's captured stderr, which closes with the test:
    put back the defaults so later tests' loggers do not write to a closed stream."""
    yield
    structlog.reset_defaults()


def s3() -> Any:
    return boto3.client("s3", region_name="us-east-1")


def new_bucket(request: pytest.FixtureRequest) -> str:
    name = "ot-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    s3().create_bucket(Bucket=name)
    return str(name)


def event_log(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT {LOG_COLUMNS} FROM events ORDER BY position, insert_no"  # noqa: S608  # a constant
        ).fetchall()


def seed(db_url: str) -> None:
    """Sessions over real HTTP, then interleaved lesson and session events in the log.

    The server is stopped before the backup: its sequencer would otherwise number the
    pending event while the test compares the logs.
    """
    with serve_app(make_settings(), db_url) as base_url, httpx.Client(base_url=base_url) as c:
        for _ in range(3):
            c.cookies.clear()
            assert c.post("/v1/session").status_code == 201
    anyio.run(append_events, db_url)


async def append_events(db_url: str) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(db_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        store = EventStore(pool)
        meta = EventMeta(trace_id="req_backup", session_id="s1")
        seqs = {"L1": 0, "L2": 0}
        for i in range(30):
            lesson = "L1" if i % 3 else "L2"
            batch = [NewEvent("beat.partial", {"beat": i, "delta": f"δ{i}"}, meta)]
            stored = await store.append(lesson, batch, expected_seq=seqs[lesson])
            seqs[lesson] = stored[-1].lesson_seq or 0
            if i % 7 == 0:
                await store.append_unordered([NewEvent("session.pinged", {"i": i}, meta)])
            if i == 20:
                assert await store.sequence() > 0
        await store.sequence()
        # One committed event the sequencer has not numbered yet: it must survive too.
        await store.append("L3", [NewEvent("lesson.created", {"t": "x"}, meta)], expected_seq=0)
    finally:
        await pool.close()


@pytest.mark.slow
def test_acceptance_12_backup_to_s3_then_restore_into_a_scratch_db_intact(
    aws: str,
    db_url: str,
    empty_db_url: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(db_url)
    bucket = new_bucket(request)
    before = table_rows(db_url)
    assert before["events"] == 30 + 5 + 1
    assert before["users"] == 3
    capsys.readouterr()  # the test server's request log lines

    assert main(["backup", "run", "--bucket", bucket, "--database-url", db_url]) == 0
    out, err = capsys.readouterr()
    key = f"backups/{today_utc().isoformat()}.sql.gz"
    assert out.strip() == f"s3://{bucket}/{key}"
    summary = err.strip().splitlines()[-1]
    assert summary.startswith(f"backup: s3://{bucket}/{key}")
    assert "bytes gzipped" in summary
    assert summary.endswith("s")

    head = s3().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/gzip"
    assert head["ServerSideEncryption"] == "AES256"
    body = s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body) == head["ContentLength"]
    text = gzip.decompress(body).decode()
    assert "PostgreSQL database dump complete" in text
    assert "OWNER TO" not in text
    assert "GRANT " not in text

    assert (
        main(["backup", "restore", "--from", f"s3://{bucket}/{key}", "--into", empty_db_url]) == 0
    )
    out, err = capsys.readouterr()
    assert table_rows(empty_db_url) == before
    listed = dict(line.split() for line in out.strip().splitlines())
    assert {t: int(n) for t, n in listed.items()} == before
    assert "omnitutor projections rebuild" in err
    assert err.strip().splitlines()[-1].startswith(f"restore: {len(before)} tables")

    original, restored = event_log(db_url), event_log(empty_db_url)
    assert restored == original
    assert [r[0] for r in restored[:-1]] == list(range(1, len(restored)))  # positions 1..n
    assert restored[-1][0] is None  # the unnumbered one is still waiting for the sequencer

    with psycopg.connect(empty_db_url) as conn:
        # constraints and the log's append-only trigger came back with the tables
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM events")
        conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO events (id, session_id, lesson_id, lesson_seq, type, payload_json)"
                " SELECT 'dup', session_id, lesson_id, lesson_seq, type, payload_json"
                " FROM events WHERE lesson_seq = 1 LIMIT 1"
            )
        conn.rollback()
        # identity and sequences continue after the restored rows
        conn.execute(
            "INSERT INTO events (id, session_id, type, payload_json)"
            " VALUES ('new', 's1', 't', '{}')"
        )
        (insert_no,) = conn.execute("SELECT insert_no FROM events WHERE id = 'new'").fetchone() or (
            0,
        )
        assert insert_no > max(r[5] for r in original)


def test_restore_refuses_a_database_that_is_not_empty(
    aws: str,
    db_url: str,
    empty_db_url: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = new_bucket(request)
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO users (id, anon_id) VALUES ('u-source', 'a-source')")
    assert (
        main(["backup", "run", "--bucket", bucket, "--key", "b.sql.gz", "--database-url", db_url])
        == 0
    )
    # The target has a table and a row of its own.
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("CREATE TABLE keep_me (x int)")
        conn.execute("INSERT INTO keep_me VALUES (1)")
    capsys.readouterr()

    uri = f"s3://{bucket}/b.sql.gz"
    assert main(["backup", "restore", "--from", uri, "--into", empty_db_url]) == 1
    err = capsys.readouterr().err
    assert "the target database is not empty (1 relations: public.keep_me)" in err
    assert "--force" in err
    assert table_rows(empty_db_url) == {"keep_me": 1}

    assert main(["backup", "restore", "--from", uri, "--into", empty_db_url, "--force"]) == 0
    assert table_rows(empty_db_url) == table_rows(db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT anon_id FROM users").fetchall() == [("a-source",)]


def test_a_failed_restore_changes_nothing(
    aws: str, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = table_rows(db_url)
    broken = tmp_path / "broken.sql.gz"
    broken.write_bytes(gzip.compress(b"CREATE TABLE half (x int);\nTHIS IS NOT SQL;\n"))
    assert main(["backup", "restore", "--from", str(broken), "--into", db_url, "--force"]) == 1
    err = capsys.readouterr().err
    assert "restore rolled back, the target is unchanged" in err
    assert 'syntax error at or near "THIS"' in err
    assert table_rows(db_url) == before  # even --force's drop was rolled back


def test_restore_from_a_local_file_gzipped_or_plain(
    aws: str,
    db_url: str,
    empty_db_url: str,
    pg_admin_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    bucket = new_bucket(request)
    assert (
        main(["backup", "run", "--bucket", bucket, "--key", "x.sql.gz", "--database-url", db_url])
        == 0
    )
    archive = tmp_path / "x.sql.gz"
    s3().download_file(bucket, "x.sql.gz", str(archive))
    plain = tmp_path / "x.sql"
    plain.write_bytes(gzip.decompress(archive.read_bytes()))
    assert main(["backup", "restore", "--from", str(archive), "--into", empty_db_url]) == 0
    assert table_rows(empty_db_url) == table_rows(db_url)
    assert main(["backup", "restore", "--from", str(plain), "--into", empty_db_url, "--force"]) == 0
    assert table_rows(empty_db_url) == table_rows(db_url)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("s3://", "expected s3://bucket/key"),
        ("s3://bucket-only", "expected s3://bucket/key"),
        ("/no/such/file.sql.gz", "no backup file at /no/such/file.sql.gz"),
    ],
)
def test_restore_names_a_bad_source(
    aws: str, empty_db_url: str, capsys: pytest.CaptureFixture[str], source: str, message: str
) -> None:
    assert main(["backup", "restore", "--from", source, "--into", empty_db_url]) == 1
    assert message in capsys.readouterr().err
    assert table_rows(empty_db_url) == {}


def test_restore_of_a_missing_object_reports_it(
    aws: str, empty_db_url: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = new_bucket(request)
    uri = f"s3://{bucket}/backups/1999-01-01.sql.gz"
    assert main(["backup", "restore", "--from", uri, "--into", empty_db_url]) == 1
    err = capsys.readouterr().err
    assert f"restore from {uri} failed" in err
    assert "NoSuchKey" in err
    assert table_rows(empty_db_url) == {}


def test_a_failed_dump_stores_nothing(
    aws: str, pg_admin_url: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = new_bucket(request)
    missing = psycopg.conninfo.make_conninfo(pg_admin_url, dbname="ot_no_such_database")
    assert (
        main(["backup", "run", "--bucket", bucket, "--key", "k.sql.gz", "--database-url", missing])
        == 1
    )
    err = capsys.readouterr().err
    assert "pg_dump failed" in err
    assert "ot_no_such_database" in err
    assert s3().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_lifecycle_expires_backups_after_30_days_and_keeps_other_rules(
    aws: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = new_bucket(request)
    other = {
        "ID": "cache-7d",
        "Filter": {"Prefix": "cache/"},
        "Status": "Enabled",
        "Expiration": {"Days": 7},
    }
    s3().put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [other]}
    )
    for _ in range(2):  # applying it again changes nothing
        assert main(["backup", "lifecycle", "--bucket", bucket]) == 0
    rules = {r["ID"]: r for r in s3().get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert set(rules) == {"cache-7d", LIFECYCLE_RULE_ID}
    ours = rules[LIFECYCLE_RULE_ID]
    assert ours["Filter"] == {"Prefix": "backups/"}
    assert ours["Status"] == "Enabled"
    assert ours["Expiration"] == {"Days": 30}
    assert rules["cache-7d"]["Expiration"] == {"Days": 7}
    assert "objects expire after 30 days (2 rules on the bucket)" in capsys.readouterr().err


def test_lifecycle_rejects_a_retention_under_one_day(
    aws: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = new_bucket(request)
    assert main(["backup", "lifecycle", "--bucket", bucket, "--days", "0"]) == 2
    assert "--days must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dump_over_the_threshold_goes_up_in_parts_and_restores(
    aws: str, db_url: str, empty_db_url: str, request: pytest.FixtureRequest
) -> None:
    bucket = new_bucket(request)
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, data bytea NOT NULL)")
        for i in range(12):  # incompressible: the gzip stays over 5 MiB, two parts at least
            conn.execute("INSERT INTO blobs VALUES (%s, %s)", (i, os.urandom(512 * 1024)))
        (digest,) = conn.execute(
            "SELECT md5(string_agg(data, '' ORDER BY id)) FROM blobs"
        ).fetchone() or ("",)
    result = run_backup(db_url, s3(), bucket, "big.sql.gz", config=transfer_config(5 * 1024 * 1024))
    assert result.gzip_bytes > 5 * 1024 * 1024
    head = s3().head_object(Bucket=bucket, Key="big.sql.gz")
    assert head["ContentLength"] == result.gzip_bytes
    assert "-" in head["ETag"]  # a multipart upload's ETag is md5-of-parts "-" part count
    assert (
        main(["backup", "restore", "--from", f"s3://{bucket}/big.sql.gz", "--into", empty_db_url])
        == 0
    )
    with psycopg.connect(empty_db_url) as conn:
        restored = conn.execute(
            "SELECT md5(string_agg(data, '' ORDER BY id)) FROM blobs"
        ).fetchone()
    assert restored == (digest,)

    # Under the threshold: one PUT of the whole archive, not of its first read.
    whole = run_backup(db_url, s3(), bucket, "one.sql.gz", config=transfer_config(64 * 1024 * 1024))
    head = s3().head_object(Bucket=bucket, Key="one.sql.gz")
    assert "-" not in head["ETag"]
    assert head["ContentLength"] == whole.gzip_bytes > 5 * 1024 * 1024
    body = s3().get_object(Bucket=bucket, Key="one.sql.gz")["Body"].read()
    assert gzip.decompress(body).rstrip().endswith(b"PostgreSQL database dump complete\n--")


class Trickle(io.RawIOBase):
    """A source that hands out its data in the given chunk sizes, like a pipe."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.at = data, sizes or [1], 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        size = self.sizes[self.at % len(self.sizes)] if self.sizes else n
        chunk = self.data[:size]
        self.data = self.data[size:]
        self.at += 1
        return chunk


@settings(max_examples=50, deadline=None)
@given(
    data=st.binary(max_size=20_000),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    reads=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
)
def test_gzip_reader_is_the_gzip_of_its_source_whatever_the_chunking(
    data: bytes, sizes: list[int], reads: list[int]
) -> None:
    totals: list[tuple[int, int]] = []
    reader = GzipReader(Trickle(data, sizes), on_read=lambda raw, out: totals.append((raw, out)))
    out = bytearray()
    i = 0
    while chunk := reader.read(reads[i % len(reads)]):
        out += chunk
        i += 1
    assert gzip.decompress(bytes(out)) == data
    assert (reader.raw_bytes, reader.out_bytes) == (len(data), len(out))
    assert totals[-1] == (len(data), len(out))


def test_gzip_reader_raises_instead_of_finishing_when_the_source_failed() -> None:
    def failed() -> None:
        raise BackupError("pg_dump failed: boom")

    reader = GzipReader(io.BytesIO(b"partial dump"), at_end=failed)
    with pytest.raises(BackupError, match="boom"):
        reader.read()


@pytest.fixture
def app_role_url(pg_admin_url: str, db_url: str) -> Iterator[str]:
    """A login role with exactly the app's grants on this test's database."""
    role = f"ot_app_{os.getpid()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'app-secret'").format(sql.Identifier(role))
        )
    with psycopg.connect(db_url) as conn:
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(conn.info.dbname), sql.Identifier(role)))  # fmt: skip
        grant_app_role(conn, role)
    try:
        yield psycopg.conninfo.make_conninfo(db_url, user=role, password="app-secret")
    finally:
        with psycopg.connect(db_url) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(db_url)["dbname"])),
                sql.Identifier(role)))  # fmt: skip
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_app_role_can_take_the_nightly_backup(
    aws: str,
    app_role_url: str,
    db_url: str,
    empty_db_url: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The backup unit runs with the API's env file, whose DATABASE_URL is omnitutor_app."""
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO users (id, anon_id) VALUES ('u1', 'a1')")
    bucket = new_bucket(request)
    assert main(["backup", "run", "--bucket", bucket, "--database-url", app_role_url]) == 0
    assert "app-secret" not in "".join(capsys.readouterr())
    key = f"backups/{today_utc().isoformat()}.sql.gz"
    assert (
        main(["backup", "restore", "--from", f"s3://{bucket}/{key}", "--into", empty_db_url]) == 0
    )
    assert table_rows(empty_db_url) == table_rows(db_url)
