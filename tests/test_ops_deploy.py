"""ops/deploy.sh rehearsed in a sandbox: a real git remote, the real CLI against moto's SSM
and a real database, a real HTTP health check.

Only systemd is stood in for (this machine does not run it): a small `systemctl` on PATH
restarts the sandbox's app, a tiny HTTP server whose health depends on the checked-out
commit. P0 acceptance test 6 is this roundtrip on the devbox: push a no-op commit, the
service restarts, the health check stays green; a broken commit is rolled back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import psycopg
import pytest

from eventstore.migrations import MIGRATIONS
from tests.conditions import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "ops" / "deploy.sh"

SERVE = """\
import http.server, json, os
VERSION = {version!r}
{broken}
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"ok": True, "version": VERSION}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Health).serve_forever()
"""

# systemd's stand-in: `restart` stops the recorded process, waits for it, starts the app.
SYSTEMCTL = """\
#!/bin/sh
echo "$*" >> "$STATE/systemctl.log"
case "$1" in
  restart)
    if [ -f "$STATE/pid" ]; then
      pid="$(cat "$STATE/pid")"
      kill "$pid" 2>/dev/null
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    fi
    nohup "$PYTHON" "$OMNITUTOR_APP_DIR/serve.py" >"$STATE/serve.log" 2>&1 &
    echo $! > "$STATE/pid"
    ;;
esac
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class Sandbox:
    dev: Path  # a developer's clone: commits are pushed from here
    app: Path  # the devbox's checkout that deploy.sh updates
    state: Path
    env: dict[str, str]
    db_url: str

    def commit(self, message: str, version: str | None = None, broken: bool = False) -> str:
        if version is None:
            git(self.dev, "commit", "--quiet", "--allow-empty", "-m", message)
        else:
            (self.dev / "serve.py").write_text(
                SERVE.format(
                    version=version, broken='raise SystemExit("broken build")' if broken else ""
                )
            )
            git(self.dev, "commit", "--quiet", "-am", message)
        git(self.dev, "push", "--quiet", "origin", "main")
        return git(self.dev, "rev-parse", "HEAD")

    def deploy(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DEPLOY)], env=self.env, capture_output=True, text=True, timeout=120
        )

    def health(self) -> dict[str, object]:
        r = httpx.get(self.env["OMNITUTOR_HEALTH_URL"], timeout=5)
        return dict(r.json())

    def head(self) -> str:
        return git(self.app, "rev-parse", "HEAD")


@pytest.fixture
def sandbox(
    aws: str, tmp_path: Path, empty_db_url: str, request: pytest.FixtureRequest
) -> Iterator[Sandbox]:
    origin, dev, app, state = (tmp_path / n for n in ("origin.git", "dev", "app", "state"))
    bin_dir, units = tmp_path / "bin", tmp_path / "units"
    for d in (state, bin_dir, units):
        d.mkdir()
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(origin))
    git(tmp_path, "clone", "--quiet", str(origin), str(dev))
    git(dev, "config", "user.email", "dev@omnitutor.test")
    git(dev, "config", "user.name", "dev")
    # The release's own pieces: the CLI entry point `make venv` installs, and its units.
    (dev / "tools").mkdir()
    (dev / "tools" / "omnitutor").write_text(
        f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m ops.cli "$@"\n'
    )
    (dev / "tools" / "omnitutor").chmod(0o755)
    (dev / "Makefile").write_text(
        "venv:\n\tmkdir -p .venv/bin\n\tcp tools/omnitutor .venv/bin/omnitutor\n"
    )
    (dev / ".gitignore").write_text(".venv/\n")
    (dev / "ops" / "systemd").mkdir(parents=True)
    for unit in (ROOT / "ops" / "systemd").iterdir():
        (dev / "ops" / "systemd" / unit.name).write_text(unit.read_text())
    (dev / "serve.py").write_text(SERVE.format(version="v1", broken=""))
    git(dev, "add", "-A")
    git(dev, "commit", "--quiet", "-m", "v1")
    git(dev, "push", "--quiet", "origin", "main")
    git(tmp_path, "clone", "--quiet", str(origin), str(app))

    systemctl = bin_dir / "systemctl"
    systemctl.write_text(SYSTEMCTL)
    systemctl.chmod(systemctl.stat().st_mode | stat.S_IXUSR)

    ssm_base = f"/t/{request.node.name}"
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(
        Name=f"{ssm_base}/prod/anthropic_api_key", Value="sk-deploy", Type="SecureString"
    )
    ssm.put_parameter(
        Name=f"{ssm_base}/prod-owner/database_url", Value=empty_db_url, Type="SecureString"
    )

    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "PORT": str(port),
        "STATE": str(state),
        "SUDO": "",
        "OMNITUTOR_APP_DIR": str(app),
        "OMNITUTOR_ENV_FILE": str(tmp_path / "etc" / "env"),
        "OMNITUTOR_OWNER_ENV_FILE": str(tmp_path / "etc" / "owner.env"),
        "OMNITUTOR_SSM_PATH": f"{ssm_base}/prod/",
        "OMNITUTOR_SSM_OWNER_PATH": f"{ssm_base}/prod-owner/",
        "OMNITUTOR_UNIT_DIR": str(units),
        "OMNITUTOR_HEALTH_URL": f"http://127.0.0.1:{port}/v1/healthz",
        "OMNITUTOR_HEALTH_TIMEOUT_S": "4",
        "OMNITUTOR_DEPLOY_LOCK": str(state / "deploy.lock"),
    }
    env.pop("DATABASE_URL", None)  # only the owner env file may say where to migrate
    box = Sandbox(dev, app, state, env, empty_db_url)
    try:
        yield box
    finally:
        pid_file = state / "pid"
        if pid_file.exists():  # the app the stand-in systemctl started, by its id
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            wait_gone(pid)


def wait_gone(pid: int, deadline_s: float = 10) -> None:
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # polling a process we cannot wait() on (not our child)


def test_deploy_roundtrip_pulls_writes_secrets_migrates_restarts_and_is_green(
    sandbox: Sandbox,
) -> None:
    first = sandbox.deploy()
    assert first.returncode == 0, first.stderr
    assert sandbox.health() == {"ok": True, "version": "v1"}

    noop = sandbox.commit("a no-op commit")
    result = sandbox.deploy()
    assert result.returncode == 0, result.stderr
    assert sandbox.head() == noop
    assert f"{noop} is live and healthy" in result.stderr
    assert sandbox.health() == {"ok": True, "version": "v1"}

    env_file = Path(sandbox.env["OMNITUTOR_ENV_FILE"])
    assert env_file.read_text().splitlines()[-1] == "ANTHROPIC_API_KEY='sk-deploy'"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "sk-deploy" not in result.stderr
    with psycopg.connect(sandbox.db_url) as conn:
        applied = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert applied == [m.version for m in MIGRATIONS]
    units = sorted(p.name for p in Path(sandbox.env["OMNITUTOR_UNIT_DIR"]).iterdir())
    shipped = sorted(p.name for p in (ROOT / "ops" / "systemd").iterdir())
    assert units == shipped
    assert {"omnitutor.service", "omnitutor-backup.service", "omnitutor-backup.timer"} <= set(units)
    calls = (sandbox.state / "systemctl.log").read_text().splitlines()
    # units installed once (first deploy), the service restarted by each deploy
    assert calls == ["daemon-reload", "restart omnitutor", "restart omnitutor"]


def test_a_release_that_never_gets_healthy_is_rolled_back(sandbox: Sandbox) -> None:
    assert sandbox.deploy().returncode == 0
    good = sandbox.commit("v2", version="v2")
    assert sandbox.deploy().returncode == 0
    assert sandbox.health()["version"] == "v2"

    broken = sandbox.commit("v3, broken", version="v3", broken=True)
    result = sandbox.deploy()
    assert result.returncode == 1
    assert "not green within 4s" in result.stderr
    assert f"deploy of {broken} failed; {good} is back and healthy" in result.stderr
    assert sandbox.head() == good
    assert sandbox.health() == {"ok": True, "version": "v2"}

    fixed = sandbox.commit("v4, fixed", version="v4")  # the next push deploys normally
    assert sandbox.deploy().returncode == 0
    assert sandbox.head() == fixed
    assert sandbox.health()["version"] == "v4"


def test_a_deploy_ref_that_was_not_pulled_is_refused(sandbox: Sandbox) -> None:
    before = sandbox.head()
    sandbox.env["DEPLOY_REF"] = "0" * 40
    result = sandbox.deploy()
    assert result.returncode == 1
    assert "not deploying" in result.stderr
    assert sandbox.head() == before
    assert not (sandbox.state / "systemctl.log").exists()
