"""The deploy workflow and the ops shell scripts: parsed, checked for the pipeline's shape,
and every shell in them run through shellcheck."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "deploy.yml"


def workflow() -> dict[Any, Any]:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    return loaded


def steps(job: str) -> list[dict[str, Any]]:
    return list(workflow()["jobs"][job]["steps"])


def test_runs_on_every_push_to_main() -> None:
    wf = workflow()
    on: Any = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert isinstance(on, dict)
    assert on["push"]["branches"] == ["main"]
    assert wf["permissions"] == {"contents": "read"}
    assert wf["concurrency"]["cancel-in-progress"] is False


def test_ci_runs_the_projects_ci_entry_point_before_any_deploy() -> None:
    runs = [s.get("run", "") for s in steps("ci")]
    assert ".ci/run" in runs
    assert any("nginx" in r and "shellcheck" in r for r in runs)  # tools the ops tests drive
    assert workflow()["jobs"]["deploy"]["needs"] == "ci"


def test_deploy_uses_the_three_secrets_and_runs_deploy_sh_over_ssh() -> None:
    text = WORKFLOW.read_text()
    for name in ("DEPLOY_HOST", "DEPLOY_USER", "DEPLOY_SSH_KEY"):
        assert f"${{{{ secrets.{name} }}}}" in text
    deploy = [s for s in steps("deploy") if "ops/deploy.sh" in s.get("run", "")]
    assert len(deploy) == 1
    run = deploy[0]["run"]
    assert "ssh " in run
    assert "BatchMode=yes" in run
    assert "StrictHostKeyChecking=yes" in run
    assert "DEPLOY_REF=$GITHUB_SHA" in run
    # secrets reach the shell as environment variables, never pasted into the script text
    for step in steps("deploy"):
        assert "secrets." not in step.get("run", "")


def shell_blocks() -> list[tuple[str, str]]:
    blocks = []
    for job, spec in workflow()["jobs"].items():
        for i, step in enumerate(spec["steps"]):
            if "run" in step:
                # Actions expressions are substituted before the shell sees the script.
                script = re.sub(r"\$\{\{[^}]*\}\}", "placeholder", step["run"])
                blocks.append((f"{job}[{i}]", script))
    return blocks


@pytest.mark.parametrize(("where", "script"), shell_blocks())
def test_workflow_shell_passes_shellcheck(where: str, script: str) -> None:
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "-"], input=script, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{where}:\n{result.stdout}"


@pytest.mark.parametrize("script", sorted((ROOT / "ops").glob("*.sh")), ids=lambda p: p.name)
def test_ops_scripts_pass_shellcheck(script: Path) -> None:
    result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
