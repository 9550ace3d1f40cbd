"""A real HTTP server for tests: the app under uvicorn in a thread, on a free local port."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from commands.bootstrap import Deps
from eventstore.settings import Settings
from tests.conditions import free_port, wait_for
from web.app import create_app
from web.transport import AbortingH11Protocol


@contextmanager
def serve_app(settings: Settings, database_url: str, deadline_s: float = 20.0) -> Iterator[str]:
    """Run the app until the block exits; yields its base URL (http://127.0.0.1:PORT)."""
    with serve(create_app(settings, database_url), deadline_s) as base_url:
        yield base_url


@contextmanager
def serve_with_deps(settings: Settings, database_url: str) -> Iterator[tuple[str, Deps]]:
    """As serve_app, and the running app's services, to observe its state from a test."""
    app = create_app(settings, database_url)
    with serve(app) as base_url:
        yield base_url, app.state.deps


@contextmanager
def serve(app: ASGIApp, deadline_s: float = 20.0) -> Iterator[str]:
    """Serve any ASGI app with uvicorn in a thread on a free port; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        access_log=False,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,  # as `omnitutor serve`: web/client_ip.py decides what to trust
        http=AbortingH11Protocol,  # as `omnitutor serve`
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    give_up = time.monotonic() + deadline_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > give_up:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)  # polling a flag uvicorn sets; there is no event to wait on
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def with_idempotency_key(request: httpx.Request) -> None:
    """httpx hook: give every POST a fresh Idempotency-Key, as the browser client does."""
    if request.method == "POST" and "idempotency-key" not in request.headers:
        request.headers["Idempotency-Key"] = str(uuid.uuid4())


def student_client(base_url: str, **kwargs: Any) -> httpx.Client:
    """An HTTP client that behaves like the product's browser client."""
    return httpx.Client(
        base_url=base_url, event_hooks={"request": [with_idempotency_key]}, **kwargs
    )


ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serve_process(
    env: Mapping[str, str], log_path: Path, deadline_s: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`omnitutor serve` in a process of its own, with this environment less DATABASE_URL
    and ANTHROPIC_API_KEY, plus `env`; yields (base URL, process) once healthy, and
    terminates it (kills it after 20 s) at the end unless the test already stopped it."""
    port = free_port()
    full_env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "ANTHROPIC_API_KEY"}
    }
    full_env.update(env)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
            try:
                return httpx.get(f"{base}/v1/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, deadline_s=deadline_s, interval_s=0.05, what="the server's healthz")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
