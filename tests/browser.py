"""Browser-test helpers: Debian's Chromium under Playwright, screenshots, a cuttable proxy.

Playwright cannot download its own browsers here; it drives the `chromium` package
(`ops/test-tools.sh` installs it). `OMNITUTOR_TEST_CHROMIUM` points at another executable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

CHROMIUM = os.environ.get("OMNITUTOR_TEST_CHROMIUM", "/usr/bin/chromium")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1100, "height": 900}
WAIT_MS = 30_000  # the deadline for any one condition the page must reach


# Module-scoped, not session-scoped: sync Playwright keeps an event loop marked as running
# in this thread while it is open, and the suite's async tests need that thread's loop.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # --no-sandbox: the tests run as root in CI, where Chromium's sandbox refuses to start;
        # --disable-dev-shm-usage: a small /dev/shm (containers) would crash its renderers.
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield b
        finally:
            b.close()


@dataclass
class PageWatch:
    """What a page did that a test should know: its requests, script errors, CSP reports."""

    origin: str
    requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def on_request(self, request: Request) -> None:
        self.requests.append(request.url)

    def on_console(self, message: ConsoleMessage) -> None:
        # A 4xx answer the page handles (a missing feature, the over-quota 429) is logged
        # by Chrome as "Failed to load resource"; that is expected, anything else is not.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.console_errors.append(message.text)

    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(self.origin + "/")]

    def assert_clean(self) -> None:
        assert self.page_errors == [], self.page_errors
        assert self.console_errors == [], self.console_errors
        assert self.foreign_requests() == [], self.foreign_requests()


@contextlib.contextmanager
def open_page(
    browser: Browser, base_url: str, viewport: dict[str, int]
) -> Iterator[tuple[Page, PageWatch]]:
    """A fresh browser context (no cookies) on the student page, ready to use."""
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    watch = PageWatch(origin=base_url)
    page.on("request", watch.on_request)
    page.on("pageerror", lambda e: watch.page_errors.append(str(e)))
    page.on("console", watch.on_console)
    try:
        page.goto(base_url + "/")
        page.wait_for_selector("body[data-ready=true]")
        yield page, watch
    finally:
        context.close()


def screenshot(page: Page, directory: Path, name: str, *, full_page: bool = True) -> Path:
    """The whole page, or what is on screen (a modal covers the screen, not the page)."""
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


def fill_setup(page: Page, topic: str, *, level: str = "first time", time: str = "30 min") -> None:
    page.select_option("#subject", "physics")
    page.fill("#topic", topic)
    page.select_option("#level", level)
    page.select_option("#time", time)
    page.select_option("#style", "problem-driven")
    page.fill("#free-text", "Focus on the physical intuition.")


def beat_cards(page: Page) -> list[dict[str, str]]:
    """Each beat card's ord, status and how many beat_complete events it received."""
    result: list[dict[str, str]] = page.eval_on_selector_all(
        "#beats > li",
        """cards => cards.map(c => ({
            ord: c.dataset.ord, status: c.dataset.status || "", completions: c.dataset.completions,
        }))""",
    )
    return result


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


class CuttableProxy:
    """A TCP proxy in front of the server that can drop every connection and refuse new ones.

    The page is loaded through it, so cutting it is what a student's flaky network does to
    the stream. It also records each request's head, to show what the browser sent back
    (Last-Event-ID) when it reconnected.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.refusing = False
        self.request_heads: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cuttable-proxy", daemon=True)
        self.port = 0
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        for writer in list(self._writers):
            writer.transport.abort()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, sniff: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while chunk := await src.read(65536):
                    if sniff and chunk[:4] in (b"GET ", b"POST", b"HEAD"):
                        self.request_heads.append(chunk.split(b"\r\n\r\n", 1)[0])
                    dst.write(chunk)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `resume`."""

        def drop() -> None:
            self.refusing = True
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(drop)

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "refusing", False)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def stream_requests(self) -> list[bytes]:
        return [h for h in self.request_heads if b"/stream" in h.split(b"\r\n", 1)[0]]


@contextlib.contextmanager
def cuttable_proxy(upstream: str) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
