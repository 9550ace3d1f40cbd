"""The student page's files over real HTTP: content types, the CSP, no inline code."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest

from web.page import STATIC_DIR


class InlineCode(HTMLParser):
    """Collects anything the page's CSP would have to allow with 'unsafe-inline'."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.found.append(f"{tag} {name}=")
            if name in ("src", "href") and value and "//" in value:
                self.external.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("inline script text")


def test_the_page_is_served_at_root_with_a_strict_csp(live_server: str) -> None:
    r = httpx.get(live_server + "/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"]
    for directive in ("script-src", "style-src", "img-src", "media-src", "connect-src"):
        assert csp[directive] == ["'self'"], directive
    assert csp["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    parser = InlineCode()
    parser.feed(r.text)
    assert parser.found == []
    assert parser.external == []


@pytest.mark.parametrize(
    ("name", "media_types"),
    [
        # Python's mimetypes names JavaScript either way depending on the version.
        ("app.js", {"text/javascript", "application/javascript"}),
        ("style.css", {"text/css"}),
        ("owl.svg", {"image/svg+xml"}),
    ],
)
def test_static_files_have_their_content_types(
    live_server: str, name: str, media_types: set[str]
) -> None:
    r = httpx.get(f"{live_server}/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] in media_types
    assert "content-security-policy" in r.headers
    assert r.content == (STATIC_DIR / name).read_bytes()
    # Revalidated cheaply rather than stored blindly: a deploy shows on the next load.
    etag = r.headers["etag"]
    again = httpx.get(f"{live_server}/static/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_a_missing_static_file_is_the_error_envelope(live_server: str) -> None:
    r = httpx.get(live_server + "/static/nope.js")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    assert r.json()["trace_id"].startswith("req_")


def test_the_static_files_ship_inside_the_package() -> None:
    assert STATIC_DIR.parent.name == "web"
    assert {p.name for p in STATIC_DIR.iterdir()} >= {"index.html", "app.js", "style.css"}
