"""`omnitutor hello-model` on both providers (the anthropic one against the fake API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fakes.anthropic_server import FakeAnthropic

ROOT = Path(__file__).resolve().parent.parent


def hello(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "hello-model"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hello_model_offline() -> None:
    done = hello({"OMNITUTOR_PROVIDER": "offline", "OMNITUTOR_LOG_LEVEL": "warning"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "offline provider, model offline" in done.stderr
    assert " ms" in done.stderr


def test_hello_model_anthropic(fake_anthropic: FakeAnthropic) -> None:
    done = hello(
        {
            "ANTHROPIC_API_KEY": "sk-test",
            "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
            "OMNITUTOR_LOG_LEVEL": "warning",
        }
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "anthropic provider, model haiku-4-5" in done.stderr
    (request,) = fake_anthropic.requests
    assert request.model == "claude-haiku-4-5"
