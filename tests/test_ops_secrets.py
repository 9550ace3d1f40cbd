"""`omnitutor ops secrets-env` against moto's SSM server, through the real boto3 client."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops.cli import main
from ops.secrets import Parameter, SecretsError, env_name, render, to_environment, write_private

PROD = "/omnitutor/prod/"


@pytest.fixture(autouse=True)
def _unbind_cli_logging() -> Iterator[None]:
    """main() points structlog at this test's captured stderr, which closes with the test:
    put back the defaults so later tests' loggers do not write to a closed stream."""
    yield
    structlog.reset_defaults()


def ssm() -> Any:
    return boto3.client("ssm", region_name="us-east-1")


def put(client: Any, name: str, value: str, kind: str = "SecureString") -> None:
    client.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)


def source_env(path: Path) -> dict[str, str]:
    """What POSIX sh reads from the file (the deploy script `.`s it)."""
    out = subprocess.run(
        ["sh", "-c", 'set -a; . "$1"; env -0', "sh", str(path)],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    pairs = (item.split(b"=", 1) for item in out.split(b"\0") if item)
    return {k.decode(): v.decode() for k, v in pairs}


def unique_path(request: pytest.FixtureRequest) -> str:
    # The moto server lives for the session: each test gets its own parameter tree.
    return f"/t/{request.node.name.replace('[', '_').replace(']', '')}/prod/"


def test_writes_every_parameter_under_the_path_mode_0600_without_printing_values(
    aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    base = unique_path(request)
    client = ssm()
    secrets = {
        "anthropic_api_key": "sk-ant-secret-1",
        "elevenlabs_api_key": "el-secret-$HOME-`x`-\\n",  # $, backquote, backslash stay literal
        "database_url": "postgresql://omnitutor_app:p%40ss@db:5432/omnitutor",
    }
    for name, value in secrets.items():
        put(client, base + name, value)
    put(client, base + "omnitutor-log-level", "info", kind="String")
    put(client, base + "nested/ot.over.quota", "0", kind="String")  # recursive, dots → _
    # more than one page (SSM returns at most 10 per call)
    for i in range(12):
        put(client, f"{base}extra/extra_{i:02d}", f"v{i}", kind="String")
    put(client, base.replace("/prod/", "/staging/") + "anthropic_api_key", "not-this-one")

    output = tmp_path / "etc" / "env"
    assert main(["ops", "secrets-env", "--path", base, "--output", str(output)]) == 0

    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    env = source_env(output)
    expected = {
        "ANTHROPIC_API_KEY": secrets["anthropic_api_key"],
        "ELEVENLABS_API_KEY": secrets["elevenlabs_api_key"],
        "DATABASE_URL": secrets["database_url"],
        "OMNITUTOR_LOG_LEVEL": "info",
        "OT_OVER_QUOTA": "0",
        **{f"EXTRA_{i:02d}": f"v{i}" for i in range(12)},
    }
    assert {k: v for k, v in env.items() if k in expected} == expected
    assert set(expected) <= set(env)
    assert "not-this-one" not in output.read_text()

    printed = capsys.readouterr()
    assert printed.out == ""
    for value in [*secrets.values(), "not-this-one"]:
        assert value not in printed.err
    assert "ANTHROPIC_API_KEY" in printed.err
    assert f"17 variables from {base}" in printed.err
    assert [p.name for p in output.parent.iterdir()] == ["env"]  # no temporary file left


def test_replaces_an_existing_file_atomically_and_tightens_its_mode(
    aws: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base = unique_path(request)
    put(ssm(), base + "anthropic_api_key", "new-key")
    output = tmp_path / "env"
    output.write_text("ANTHROPIC_API_KEY='old-key'\nSTALE=1\n")
    output.chmod(0o644)
    assert main(["ops", "secrets-env", "--path", base.rstrip("/"), "--output", str(output)]) == 0
    assert source_env(output)["ANTHROPIC_API_KEY"] == "new-key"
    assert "STALE" not in source_env(output)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a/anthropic_api_key", "b/anthropic_api_key"], "both make ANTHROPIC_API_KEY"),
        (["9lives"], "does not make an environment variable name"),
    ],
)
def test_refuses_names_that_collide_or_cannot_be_variables(
    aws: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    names: list[str],
    message: str,
) -> None:
    base = unique_path(request)
    for name in names:
        put(ssm(), base + name, "secret-value")
    output = tmp_path / "env"
    output.write_text("KEEP='me'\n")
    assert main(["ops", "secrets-env", "--path", base, "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "nothing written" in err
    assert "secret-value" not in err
    assert output.read_text() == "KEEP='me'\n"


def test_refuses_a_value_an_environment_file_cannot_carry(
    aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    base = unique_path(request)
    put(ssm(), base + "api_key", "it's-a-secret")
    output = tmp_path / "env"
    assert main(["ops", "secrets-env", "--path", base, "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert f"{base}api_key has a single quote" in err
    assert "it's-a-secret" not in err
    assert not output.exists()


def test_an_empty_path_writes_nothing(
    aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "env"
    assert main(["ops", "secrets-env", "--path", "/nothing/here/", "--output", str(output)]) == 1
    assert "no parameters under /nothing/here/" in capsys.readouterr().err
    assert not output.exists()


def test_a_relative_path_is_bad_input(
    aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "env"
    assert main(["ops", "secrets-env", "--path", "omnitutor/prod", "--output", str(output)]) == 2
    assert "must start with '/'" in capsys.readouterr().err
    assert not output.exists()


def test_aws_errors_are_reported_not_raised(
    aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on discard
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    output = tmp_path / "env"
    assert main(["ops", "secrets-env", "--path", PROD, "--output", str(output)]) == 1
    assert f"reading SSM parameters under {PROD}" in capsys.readouterr().err
    assert not output.exists()


def test_env_name_is_upper_snake_of_the_last_segment() -> None:
    assert env_name("/omnitutor/prod/anthropic_api_key") == "ANTHROPIC_API_KEY"
    assert env_name("/omnitutor/prod/db/database-url") == "DATABASE_URL"
    assert env_name("/omnitutor/prod/ot.over.quota") == "OT_OVER_QUOTA"
    with pytest.raises(SecretsError):
        env_name("/omnitutor/prod/has space")


safe_values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="'\x7f"),
    max_size=40,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True), safe_values))
def test_sh_reads_back_exactly_what_was_stored(tmp_path: Path, values: dict[str, str]) -> None:
    env = to_environment(Parameter(f"/p/k_{k}", v) for k, v in values.items())  # not PATH, IFS…
    path = tmp_path / "env"
    write_private(path, render(env, "test"))
    read = source_env(path)
    assert {k: read.get(k) for k in env} == env
