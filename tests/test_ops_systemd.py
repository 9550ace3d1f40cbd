"""ops/systemd units: verified by systemd-analyze, and their commands parsed by our CLI.

The test copies differ from the shipped units only in the venv path (the production path
does not exist here); systemd-analyze then checks every key, the calendar spec and that the
command is executable, and rates the sandboxing.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest

from eventstore.settings import Settings
from ops.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "ops" / "systemd"
PROD_CLI = "/home/ubuntu/omnitutor-app/.venv/bin/omnitutor"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
# systemd-analyze security rates exposure 0-10 (shown) or 0-100 (--threshold): ≤ 2.0 is "OK".
MAX_EXPOSURE = 20

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    sections: Unit = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), defaultdict(list))
            continue
        key, _, value = line.partition("=")
        current[key].append(value)
    return sections


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def environment(unit: Unit) -> dict[str, str]:
    return dict(v.split("=", 1) for v in unit["Service"]["Environment"])


@pytest.fixture
def test_units(tmp_path: Path) -> Path:
    local_cli = Path(sys.executable).parent / "omnitutor"
    assert local_cli.is_file(), f"the omnitutor entry point is missing from {local_cli.parent}"
    for unit in UNITS.iterdir():
        text = unit.read_text()
        (tmp_path / unit.name).write_text(text.replace(PROD_CLI, str(local_cli)))
    return tmp_path


def test_systemd_analyze_verifies_every_unit(test_units: Path) -> None:
    names = sorted(p.name for p in test_units.iterdir())
    assert {"omnitutor.service", "omnitutor-backup.service", "omnitutor-backup.timer"} <= set(names)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(test_units / n) for n in names)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not even a warning ("Unknown key …, ignoring" exits 0)


def test_systemd_analyze_fails_a_broken_unit(test_units: Path) -> None:
    """The check above can fail: a misspelt hardening key is caught."""
    unit = test_units / "omnitutor.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert "Unknown key 'NoNewPrivilege'" in result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_services_are_sandboxed(test_units: Path, name: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={MAX_EXPOSURE}",
         "--no-pager", str(test_units / name)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert re.search(r"Overall exposure level for .*: \d\.\d OK", result.stdout)


@pytest.mark.parametrize("name", SERVICES)
def test_services_run_as_omnitutor_with_secrets_and_a_writable_home_only(name: str) -> None:
    unit = parse_unit(UNITS / name)
    service = unit["Service"]
    assert one(unit, "Service", "User") == "omnitutor"
    assert one(unit, "Service", "EnvironmentFile") == "/etc/omnitutor/env"
    home = environment(unit)["OMNITUTOR_HOME"]
    assert one(unit, "Service", "ReadWritePaths") == home
    assert f"/var/lib/{one(unit, 'Service', 'StateDirectory')}" == home
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == [value], key


def test_the_api_listens_where_nginx_proxies_and_restarts_on_failure() -> None:
    unit = parse_unit(UNITS / "omnitutor.service")
    command = shlex.split(one(unit, "Service", "ExecStart"))
    assert command == [PROD_CLI, "serve", "--host", "127.0.0.1", "--port", "8790"]
    assert one(unit, "Service", "Restart") == "on-failure"
    assert environment(unit)["OMNITUTOR_TRUSTED_PROXIES"] == "127.0.0.1"
    nginx = (ROOT / "ops" / "nginx" / "omnitutor.conf").read_text()
    assert "server 127.0.0.1:8790;" in nginx
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_the_timer_starts_the_backup_nightly() -> None:
    timer = parse_unit(UNITS / "omnitutor-backup.timer")
    assert one(timer, "Timer", "Unit") == "omnitutor-backup.service"
    assert one(timer, "Timer", "Persistent") == "true"
    spec = one(timer, "Timer", "OnCalendar")
    result = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=2", spec], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # two consecutive elapses are one day apart
    days = re.findall(r"\w{3} (\d{4}-\d{2}-\d{2}) 03:17:00 UTC", result.stdout)
    assert len(days) >= 2
    first, second = (date.fromisoformat(d) for d in days[:2])
    assert (second - first).days == 1
    assert one(parse_unit(UNITS / "omnitutor-backup.service"), "Service", "Type") == "oneshot"


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_is_a_command_the_cli_accepts(name: str) -> None:
    command = shlex.split(one(parse_unit(UNITS / name), "Service", "ExecStart"))
    assert command[0] == PROD_CLI
    args = build_parser(Settings()).parse_args(command[1:])
    assert callable(args.handler)
    if name == "omnitutor-backup.service":
        assert (args.command, args.backup) == ("backup", "run")
        assert (args.bucket, args.prefix) == ("omnitutor-assets", "backups/")


def test_the_privacy_purge_runs_daily_and_erases_after_thirty_days() -> None:
    timer = parse_unit(UNITS / "omnitutor-privacy.timer")
    assert one(timer, "Timer", "Unit") == "omnitutor-privacy.service"
    assert one(timer, "Timer", "Persistent") == "true"
    result = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=2", one(timer, "Timer", "OnCalendar")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    days = re.findall(r"\w{3} (\d{4}-\d{2}-\d{2}) 04:41:00 UTC", result.stdout)
    first, second = (date.fromisoformat(d) for d in days[:2])
    assert (second - first).days == 1
    service = parse_unit(UNITS / "omnitutor-privacy.service")
    assert one(service, "Service", "Type") == "oneshot"
    command = shlex.split(one(service, "Service", "ExecStart"))
    args = build_parser(Settings()).parse_args(command[1:])
    assert (args.command, args.privacy, args.older_than) == ("privacy", "purge", None)


def test_the_timer_starts_the_plan_prewarm_nightly_at_low_priority() -> None:
    timer = parse_unit(UNITS / "omnitutor-prewarm.timer")
    assert one(timer, "Timer", "Unit") == "omnitutor-prewarm.service"
    assert one(timer, "Timer", "Persistent") == "true"
    result = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=2", one(timer, "Timer", "OnCalendar")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    days = re.findall(r"\w{3} (\d{4}-\d{2}-\d{2}) 03:30:00 UTC", result.stdout)
    first, second = (date.fromisoformat(d) for d in days[:2])
    assert (second - first).days == 1
    service = parse_unit(UNITS / "omnitutor-prewarm.service")
    assert one(service, "Service", "Type") == "oneshot"
    assert one(service, "Service", "Nice") == "19"
    assert one(service, "Service", "IOSchedulingClass") == "idle"
    args = build_parser(Settings()).parse_args(
        shlex.split(one(service, "Service", "ExecStart"))[1:]
    )
    assert (args.command, args.cache, args.top) == ("cache", "prewarm", 100)
