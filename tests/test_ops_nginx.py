"""ops/nginx/omnitutor.conf, checked by nginx itself and then run in front of the real app.

A test copy differs from the shipped file only in what cannot exist here (ports 80/443, the
Let's Encrypt certificate, the upstream port, the static root); each substitution must apply
exactly once, so a reshaped config breaks this test rather than slipping past it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from eventstore.settings import Settings
from tests import live
from tests.conditions import free_port, wait_for
from tests.conftest import make_settings
from web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "ops" / "nginx" / "omnitutor.conf"
HOST = "omnitutor.ai"

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def substitute(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected {old!r} exactly once in {SITE.name}"
    return text.replace(old, new)


@dataclass
class Site:
    http: str
    https: str
    tls: ssl.SSLContext
    design: Path
    acme: Path


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=DNS:{HOST}"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def write_config(prefix: Path, upstream_port: int) -> tuple[Path, int, int, Path, Path]:
    """The shipped site, made runnable here, inside a minimal main nginx.conf."""
    cert, key = make_certificate(prefix)
    design_root, acme_root = prefix / "www", prefix / "acme"
    http_port, https_port = free_port(), free_port()
    site = SITE.read_text()
    site = substitute(site, "server 127.0.0.1:8790;", f"server 127.0.0.1:{upstream_port};")
    site = substitute(site, "    listen 80;\n", f"    listen 127.0.0.1:{http_port};\n")
    site = substitute(site, "    listen [::]:80;\n", "")
    site = substitute(
        site, "    listen 443 ssl http2;\n", f"    listen 127.0.0.1:{https_port} ssl;\n"
    )
    site = substitute(site, "    listen [::]:443 ssl http2;\n", "")
    site = substitute(site, "/etc/letsencrypt/live/omnitutor.ai/fullchain.pem", str(cert))
    site = substitute(site, "/etc/letsencrypt/live/omnitutor.ai/privkey.pem", str(key))
    site = substitute(site, "root /var/www/omnitutor;", f"root {design_root};")
    site = substitute(site, "root /var/www/letsencrypt;", f"root {acme_root};")
    (prefix / "omnitutor.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # nginx started by root hands requests to workers running as nobody, who could not
    # read pytest's private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {prefix / 'omnitutor.conf'};\n}}\n"
    )
    return prefix / "nginx.conf", http_port, https_port, design_root, acme_root


def nginx_command(prefix: Path, conf: Path, *extra: str) -> list[str]:
    return ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), *extra]


def wait_for_port(port: int, process: subprocess.Popen[bytes], deadline_s: float = 10) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    wait_for(listening, deadline_s, what=f"nginx listening on {port}")


@contextmanager
def running_nginx(prefix: Path, upstream_port: int) -> Iterator[Site]:
    conf, http_port, https_port, design, acme = write_config(prefix, upstream_port)
    process = subprocess.Popen(
        nginx_command(prefix, conf, "-g", "daemon off;"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(https_port, process)
        wait_for_port(http_port, process)
        tls = ssl.create_default_context(cafile=str(prefix / "fullchain.pem"))
        tls.check_hostname = False  # we connect to 127.0.0.1 with Host: omnitutor.ai
        yield Site(
            f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}", tls, design, acme
        )
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


class Probe:
    """Test-only routes in front of the real app: echo the request, stream on a signal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.second_event_may_go = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or "/probe/" not in path:
            await self.app(scope, receive, send)
            return
        if path.endswith("/stream"):
            await self.stream(send)
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = orjson.dumps({"headers": headers, "client": scope["client"][0], "path": path})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def stream(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"id: 1\ndata: first\n\n",
                    "more_body": True})  # fmt: skip
        # The second event waits until the client has the first, through nginx.
        await anyio.to_thread.run_sync(self.second_event_may_go.wait, 10)
        await send({"type": "http.response.body", "body": b"id: 2\ndata: second\n\n"})


@contextmanager
def serve(app: ASGIApp) -> Iterator[int]:
    """The app on a free local port (tests/live.py); yields the port nginx proxies to."""
    with live.serve(app) as base_url:
        yield int(base_url.rsplit(":", 1)[1])


@pytest.fixture
def probe(db_url: str) -> Probe:
    return Probe(create_app(make_settings(), db_url))


@pytest.fixture
def site(probe: Probe, tmp_path: Path) -> Iterator[Site]:
    with serve(probe) as port, running_nginx(tmp_path, port) as s:
        yield s


def client(site: Site, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=site.https, verify=site.tls, headers={"Host": HOST}, **kw)


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf, *_ = write_config(tmp_path, free_port())
    checked = subprocess.run(nginx_command(tmp_path, conf, "-t"), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr
    assert "test is successful" in checked.stderr


def test_body_limit_is_the_services() -> None:
    match = re.search(r"client_max_body_size (\d+)k;", SITE.read_text())
    assert match is not None
    assert int(match.group(1)) * 1024 == Settings().max_body_bytes


def test_http_redirects_to_https_but_serves_acme_challenges(site: Site) -> None:
    with httpx.Client(base_url=site.http, headers={"Host": HOST}) as c:
        r = c.get("/v1/healthz?probe=1")
        assert r.status_code == 301
        assert r.headers["location"] == "https://omnitutor.ai/v1/healthz?probe=1"
        (site.acme / ".well-known" / "acme-challenge").mkdir(parents=True)
        (site.acme / ".well-known" / "acme-challenge" / "token123").write_text("proof")
        r = c.get("/.well-known/acme-challenge/token123")
        assert (r.status_code, r.text) == (200, "proof")


def test_https_reaches_the_service(site: Site) -> None:
    with client(site) as c:
        r = c.get("/v1/healthz")
        assert r.status_code == 200
        assert r.json()["ok"] is True
        assert r.headers["x-trace-id"].startswith("req_")
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        r = c.post("/v1/session")
        assert r.status_code == 201, r.text
        assert "ot_session" in r.cookies


@pytest.mark.parametrize("path", ["/probe/headers", "/v1/lesson/probe/headers"])
def test_the_service_sees_the_client_address_and_never_a_forged_one(site: Site, path: str) -> None:
    with client(site) as c:
        r = c.get(path, headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"})
    seen = r.json()
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-real-ip"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-proto"] == "https"
    assert seen["headers"]["host"] == HOST
    assert seen["client"] == "127.0.0.1"
    assert "connection" not in seen["headers"]  # HTTP/1.1 keep-alive to the upstream


def test_lesson_streams_are_not_buffered(site: Site, probe: Probe) -> None:
    received: list[str] = []
    with client(site, timeout=15) as c, c.stream("GET", "/v1/lesson/probe/stream") as r:
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data: "):
                received.append(line.removeprefix("data: "))
                # Had nginx buffered the response, the first event would never arrive,
                # because the upstream holds the second until this line runs.
                probe.second_event_may_go.set()
    assert received == ["first", "second"]


def test_a_body_over_the_limit_gets_the_error_envelope(site: Site) -> None:
    limit = Settings().max_body_bytes
    with client(site) as c:
        r = c.post(
            "/v1/session", content=b"x" * (limit + 1), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        body = r.json()
        assert body["ok"] is False
        assert body["code"] == "payload_too_large"
        assert body["trace_id"].startswith("nginx_")
        # At the limit exactly, nginx passes the request on and the service answers.
        r = c.post(
            "/v1/session", content=b"x" * limit, headers={"Content-Type": "application/json"}
        )
        assert r.headers["x-trace-id"].startswith("req_")


def test_design_files_are_served_statically(site: Site) -> None:
    (site.design / "_design").mkdir(parents=True)
    (site.design / "_design" / "hub.html").write_text("<h1>review hub</h1>")
    with client(site) as c:
        r = c.get("/_design/hub.html")
        assert (r.status_code, r.text) == (200, "<h1>review hub</h1>")
        assert "x-trace-id" not in r.headers  # nginx answered; the app was not involved
        assert c.get("/_design/missing.html").status_code == 404


def test_a_restarting_service_gets_a_recoverable_envelope(tmp_path: Path) -> None:
    with running_nginx(tmp_path, free_port()) as s, client(s) as c:  # nothing listens there
        r = c.get("/v1/healthz")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert r.json()["code"] == "internal"
    assert r.json()["recoverable"] is True
