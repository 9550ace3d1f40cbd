"""Database backups: pg_dump → gzip → S3, restore into a scratch database, retention.

A backup is a plain-SQL `pg_dump` of the whole database, gzipped as it streams and uploaded
with boto3's `upload_fileobj` (multipart once it passes the threshold), so neither the dump
nor the archive is ever held whole in memory or on disk. Ownership and privileges are left
out of the dump: restore runs as whoever restores, and the app role's grants are code
(`grant_app_role`), re-applied after the data is in.

The client binaries come from the `pgserver` wheel (PostgreSQL 16, fine against 15+
servers), so a machine with no PostgreSQL client installed can still back up and restore.
Passwords travel to them in PGPASSWORD, never on a command line `ps` can show.

Restore replays the SQL through `psql --single-transaction` with ON_ERROR_STOP: it lands
whole or not at all. It refuses a database that already has tables unless forced, in which
case the old schemas are dropped inside that same transaction.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventstore.errors import translate_errors
from eventstore.migrations import APP_ROLE, grant_app_role
from eventstore.queries import load_queries

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from mypy_boto3_s3.client import S3Client

_Q = load_queries(Path(__file__).parent / "sql" / "backup.sql")

DEFAULT_BUCKET = "omnitutor-assets"
DEFAULT_PREFIX = "backups/"
RETENTION_DAYS = 30
LIFECYCLE_RULE_ID = "omnitutor-backups-retention"
_CHUNK = 256 * 1024


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class BackupError(Exception):
    """A backup or restore that did not complete; the message says what to do."""


class TargetNotEmpty(BackupError):
    def __init__(self, relations: list[str]) -> None:
        shown = ", ".join(relations[:5]) + (" …" if len(relations) > 5 else "")
        super().__init__(
            f"the target database is not empty ({len(relations)} relations: {shown}); "
            "restore into a new, empty database, or pass --force to replace everything in it"
        )
        self.relations = relations


def pg_tool(name: str) -> Path:
    """A PostgreSQL 16 client binary from the pgserver wheel."""
    with warnings.catch_warnings():
        # pgserver asks platformdirs for XDG_RUNTIME_DIR, unset on servers; irrelevant here.
        warnings.simplefilter("ignore", UserWarning)
        import pgserver  # deferred: only backup and restore need the binaries

    path = Path(pgserver.__file__).parent / "pginstall" / "bin" / name
    if not path.is_file():
        raise BackupError(f"{name} not found at {path}; reinstall the pgserver package")
    return path


def libpq_args(url: str) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment carrying it) for a client binary."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    password = params.pop("password", None)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    return make_conninfo("", **params), env


def backup_key(prefix: str, day: date) -> str:
    return f"{normalise_prefix(prefix)}{day.isoformat()}.sql.gz"


def normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key → (bucket, key)."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise BackupError(f"expected s3://bucket/key, got {uri!r}")
    return bucket, key


class Progress:
    """Progress lines on stderr, at most one per `every` seconds."""

    def __init__(self, label: str, every: float = 1.0, out: IO[str] | None = None) -> None:
        self.label, self.every = label, every
        self.out = out if out is not None else sys.stderr
        self.started = self.last = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(f"{self.label}: {message} ({self.elapsed():.1f}s)", file=self.out, flush=True)


def mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


class GzipReader(io.RawIOBase):
    """A readable stream of the gzip of `source`, compressed as it is read.

    boto3 reads it like a file. When `source` ends, `at_end` runs before the gzip trailer is
    produced; if it raises (the dump failed), the reader raises instead of finishing, so a
    truncated dump never becomes a complete-looking archive.
    """

    def __init__(
        self,
        source: Readable,
        at_end: Callable[[], None] = lambda: None,
        on_read: Callable[[int, int], None] = lambda raw, out: None,
        level: int = 6,
    ) -> None:
        self.source, self.at_end, self.on_read = source, at_end, on_read
        self.compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self.pending = bytearray()
        self.raw_bytes = 0
        self.out_bytes = 0
        self.finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self.pending and not self.finished:
            chunk = self.source.read(_CHUNK)
            if chunk:
                self.raw_bytes += len(chunk)
                self.pending += self.compressor.compress(chunk)
            else:
                self.at_end()
                self.pending += self.compressor.flush()
                self.finished = True
        n = min(len(view), len(self.pending))
        view[:n] = self.pending[:n]
        del self.pending[:n]
        self.out_bytes += n
        self.on_read(self.raw_bytes, self.out_bytes)
        return n


@dataclass(frozen=True)
class BackupResult:
    bucket: str
    key: str
    sql_bytes: int
    gzip_bytes: int
    seconds: float

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def transfer_config(part_bytes: int = 16 * 1024 * 1024) -> TransferConfig:
    """Multipart above one part; a non-seekable stream is buffered a part at a time, and
    four parts in flight bound the memory a backup takes."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=part_bytes, multipart_chunksize=part_bytes, max_concurrency=4
    )


def run_backup(
    database_url: str,
    s3: S3Client,
    bucket: str,
    key: str,
    config: TransferConfig | None = None,
    progress: Progress | None = None,
) -> BackupResult:
    """Stream a gzipped plain-SQL dump of the database to s3://bucket/key."""
    progress = progress or Progress("backup")
    conninfo, env = libpq_args(database_url)
    command = [
        str(pg_tool("pg_dump")),
        "--format=plain",
        "--no-owner",
        "--no-privileges",
        "--encoding=UTF8",
        f"--dbname={conninfo}",
    ]
    with tempfile.TemporaryFile() as errors:
        dump = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env)
        if dump.stdout is None:  # stdout=PIPE always gives one
            raise BackupError("pg_dump started without an output pipe")

        def dump_succeeded() -> None:
            if dump.wait() != 0:
                raise BackupError(f"pg_dump failed: {_tail(errors)}")

        reader = GzipReader(
            dump.stdout,
            at_end=dump_succeeded,
            on_read=lambda raw, out: progress.update(f"{mb(raw)} of SQL, {mb(out)} gzipped"),
        )
        # s3transfer takes a short read for the end of the file: buffer, so that every
        # read(n) returns n bytes until the real end.
        buffered = io.BufferedReader(reader, buffer_size=_CHUNK)
        try:
            s3.upload_fileobj(
                buffered,
                bucket,
                key,
                ExtraArgs={
                    "ContentType": "application/gzip",
                    "ServerSideEncryption": "AES256",
                    "Metadata": {"format": "pg_dump-plain", "pg-dump-major": "16"},
                },
                Config=config or transfer_config(),
            )
        except BaseException:
            if dump.poll() is None:
                dump.kill()  # the upload failed: stop the dump rather than leave it blocked
            dump.wait()
            raise
        finally:
            buffered.close()
            dump.stdout.close()
    return BackupResult(bucket, key, reader.raw_bytes, reader.out_bytes, progress.elapsed())


def _tail(errors: IO[bytes], limit: int = 2000) -> str:
    errors.seek(0)
    text = errors.read().decode("utf-8", "replace").strip()
    return text[-limit:] or "(no message)"


def user_relations(url: str) -> list[str]:
    with translate_errors(), psycopg.connect(url) as conn:
        return [str(r[0]) for r in conn.execute(_Q["user_relations"]).fetchall()]


def _drop_everything(url: str) -> str:
    """SQL that drops every user schema and recreates an empty public one."""
    with translate_errors(), psycopg.connect(url) as conn:
        schemas = [str(r[0]) for r in conn.execute(_Q["user_schemas"]).fetchall()]
        statements = [
            sql.SQL(_Q["drop_schema"]).format(name=sql.Identifier(s)).as_string(conn)
            for s in schemas
        ]
        statements.append(sql.SQL(_Q["create_public_schema"]).as_string(conn))
    return "\n".join(f"{s.strip().rstrip(';')};" for s in statements) + "\n"


@dataclass(frozen=True)
class RestoreResult:
    sql_bytes: int
    seconds: float
    tables: dict[str, int]


def restore(
    source: Readable,
    into_url: str,
    force: bool = False,
    progress: Progress | None = None,
    app_role: str = APP_ROLE,
) -> RestoreResult:
    """Replay a plain-SQL dump into `into_url` in one transaction; return per-table rows."""
    progress = progress or Progress("restore")
    existing = user_relations(into_url)
    if existing and not force:
        raise TargetNotEmpty(existing)
    prelude = _drop_everything(into_url) if existing else ""
    conninfo, env = libpq_args(into_url)
    command = [
        str(pg_tool("psql")),
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={conninfo}",
    ]
    written = 0
    with tempfile.TemporaryFile() as errors:
        psql = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, env=env
        )
        if psql.stdin is None:  # stdin=PIPE always gives one
            raise BackupError("psql started without an input pipe")
        try:
            psql.stdin.write(prelude.encode())
            while chunk := source.read(_CHUNK):
                psql.stdin.write(chunk)
                written += len(chunk)
                progress.update(f"{mb(written)} of SQL replayed")
            psql.stdin.close()
        except BrokenPipeError:
            pass  # psql stopped at an error; its exit status and message say which
        except BaseException:
            psql.kill()
            psql.wait()
            raise
        if psql.wait() != 0:
            raise BackupError(f"restore rolled back, the target is unchanged: {_tail(errors)}")
    with translate_errors(), psycopg.connect(into_url) as conn:
        grant_app_role(conn, app_role)
        conn.commit()
    return RestoreResult(written, progress.elapsed(), table_rows(into_url))


def table_rows(url: str) -> dict[str, int]:
    """Exact row count of every table in the public schema, by name."""
    with translate_errors(), psycopg.connect(url) as conn:
        names = [str(r[0]) for r in conn.execute(_Q["public_tables"]).fetchall()]
        counts: dict[str, int] = {}
        for name in names:
            row = conn.execute(
                sql.SQL(_Q["count_rows"]).format(table=sql.Identifier(name))
            ).fetchone()
            counts[name] = int(row[0]) if row else 0
    return counts


@contextmanager
def open_dump(source: str, s3: Callable[[], S3Client]) -> Iterator[Readable]:
    """The decompressed SQL of a backup at s3://bucket/key or in a local file.

    Local files may be gzipped or plain SQL (the gzip magic number decides).
    """
    if source.startswith("s3://"):
        bucket, key = parse_s3_uri(source)
        body = s3().get_object(Bucket=bucket, Key=key)["Body"]
        try:
            with gzip.GzipFile(fileobj=body, mode="rb") as stream:
                yield stream
        finally:
            body.close()
        return
    path = Path(source)
    if not path.is_file():
        raise BackupError(f"no backup file at {path}")
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if gzipped:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        else:
            yield raw


def apply_retention(
    s3: S3Client, bucket: str, prefix: str = DEFAULT_PREFIX, days: int = RETENTION_DAYS
) -> list[dict[str, Any]]:
    """Expire objects under `prefix` after `days`, keeping the bucket's other rules.

    S3 replaces a bucket's whole lifecycle configuration on every put, so the current rules
    are read first and only this one (by its id) is replaced. Returns the rules now in force.
    """
    from botocore.exceptions import ClientError

    try:
        current = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        current = []
    rule: dict[str, Any] = {
        "ID": LIFECYCLE_RULE_ID,
        "Filter": {"Prefix": normalise_prefix(prefix)},
        "Status": "Enabled",
        "Expiration": {"Days": days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }
    rules: list[Any] = [r for r in current if r.get("ID") != LIFECYCLE_RULE_ID] + [rule]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    return [dict(r) for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]]


def today_utc() -> date:
    return datetime.now(UTC).date()
