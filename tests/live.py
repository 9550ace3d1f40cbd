"""A real HTTP server for tests: the app under uvicorn in a thread, on a free local port."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from commands.bootstrap import Deps
from eventstore.settings import Settings
from web.app import create_app


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
