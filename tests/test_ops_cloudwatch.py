"""ops/cloudwatch: the agent ships the service's journal to CloudWatch Logs, indexed by trace_id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OPS = Path(__file__).parent.parent / "ops"
AGENT = OPS / "cloudwatch" / "amazon-cloudwatch-agent.json"
INDEX_POLICY = OPS / "cloudwatch" / "index-policy.json"
# The retention values CloudWatch Logs accepts (PutRetentionPolicy).
RETENTION_DAYS = {
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
}


def agent() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(AGENT.read_text())
    return config


def journald_entries() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = agent()["logs"]["logs_collected"]["journald"]["collect_list"]
    return entries


def unit_section(path: Path, name: str) -> dict[str, list[str]]:
    """A systemd unit's section: every value of each key (systemd keys repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == name and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_the_agent_config_has_the_journald_shape() -> None:
    config = agent()
    assert set(config) <= {"agent", "logs", "metrics", "traces"}
    assert set(config["logs"]["logs_collected"]) == {"journald"}
    entries = journald_entries()
    assert entries
    for entry in entries:
        assert set(entry) <= {
            "log_group_name",
            "log_stream_name",
            "retention_in_days",
            "units",
            "filters",
        }, entry
        assert entry["log_group_name"].startswith("/omnitutor/")
        assert "{instance_id}" in entry["log_stream_name"]
        assert entry["retention_in_days"] in RETENTION_DAYS
        assert entry["units"]
        assert all(isinstance(u, str) for u in entry["units"])


def test_every_shipped_unit_is_one_of_ours_and_the_api_is_shipped() -> None:
    ours = {p.name for p in (OPS / "systemd").glob("*.service")}
    shipped = [u for entry in journald_entries() for u in entry["units"]]
    assert len(shipped) == len(set(shipped)), "a unit shipped twice is billed twice"
    assert set(shipped) <= ours
    assert "omnitutor.service" in shipped
    # Every service of ours reaches CloudWatch: a failing timer job must be visible too.
    assert set(shipped) == ours


def test_the_api_logs_json_to_the_journal() -> None:
    # The agent reads the journal; the unit must not send stdout/stderr elsewhere, and the
    # lines must be JSON (not a terminal) so that CloudWatch parses trace_id out of them.
    service = unit_section(OPS / "systemd" / "omnitutor.service", "Service")
    assert service.get("StandardOutput", ["journal"]) == ["journal"]
    assert service.get("StandardError", ["inherit"])[-1] in {"inherit", "journal"}
    assert "OMNITUTOR_LOG_FORMAT=json" in service["Environment"]


def test_trace_id_is_in_the_field_index_policy() -> None:
    policy = json.loads(INDEX_POLICY.read_text())
    assert set(policy) == {"Fields"}
    assert policy["Fields"][0] == "trace_id"
    assert len(policy["Fields"]) == len(set(policy["Fields"]))
