"""The student page in a real browser (Chromium under Playwright) against a live server.

Each test saves screenshots under its tmp_path and prints their names. The offline tutor
streams with a small pace, so a lesson takes a few seconds and the stream can be cut midway.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from commands import spendcap
from eventstore.database import open_pool
from tests.browser import (
    DESKTOP,
    PHONE,
    beat_cards,
    browser,  # noqa: F401  (the session fixture)
    cuttable_proxy,
    fill_setup,
    no_horizontal_scroll,
    open_page,
    screenshot,
)
from tests.conftest import make_settings
from tests.live import serve_app

pytestmark = pytest.mark.slow


@contextmanager
def serve_page(db_url: str, **overrides: Any) -> Iterator[str]:
    settings: dict[str, Any] = {
        "offline_pace_ms": 2,
        "beat_partial_ms": 40,
        "sse_heartbeat_s": 1.0,
        "sse_retry_ms": 200,
    }
    settings.update(overrides)
    with serve_app(make_settings(**settings), db_url) as base_url:
        yield base_url


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    with serve_page(db_url) as base_url:
        yield base_url


def plan_and_start(page: Page, topic: str) -> int:
    """Setup form → plan → Start; returns the plan's number of beats."""
    fill_setup(page, topic)
    page.click("#plan-submit")
    page.wait_for_selector("#view-plan:not([hidden])")
    total = page.locator("#plan-beats > li").count()
    page.click("#plan-start")
    page.wait_for_selector("#view-lesson:not([hidden])")
    return total


def wait_complete(page: Page) -> None:
    page.wait_for_selector("#lesson-done:not([hidden])")


def test_a_whole_lesson_by_keyboard_at_phone_width(
    browser: Browser,  # noqa: F811
    server: str,
    tmp_path: Path,
) -> None:
    with open_page(browser, server, PHONE) as (page, watch):
        assert page.evaluate("document.activeElement.id") == "topic"
        screenshot(page, tmp_path, "01-setup-phone")
        page.keyboard.type("Hooke's law & simple harmonic motion")
        page.keyboard.press("Enter")  # submits the setup form
        page.wait_for_selector("#view-plan:not([hidden])")
        assert page.evaluate("document.activeElement.id") == "plan-title"
        summary = page.text_content("#plan-summary") or ""
        assert summary.startswith("30 min · undergrad")
        titles = page.locator("#plan-beats .title").all_text_contents()
        assert len(titles) >= 3
        screenshot(page, tmp_path, "02-plan-phone")

        page.focus("#plan-start")
        page.keyboard.press("Enter")
        page.wait_for_selector("#view-lesson:not([hidden])")
        # Beat 1 came with the plan; the others stream in.
        assert page.locator("#beat-1[data-status=ready]").count() == 1
        page.wait_for_selector("#beats .streaming", state="attached")
        screenshot(page, tmp_path, "03-lesson-streaming-phone")

        wait_complete(page)
        cards = beat_cards(page)
        assert [c["ord"] for c in cards] == [str(n) for n in range(1, len(titles) + 1)]
        assert all(c["status"] == "ready" for c in cards)
        # Beat 1 arrived with the plan; each later beat arrived exactly once on the stream.
        assert [c["completions"] for c in cards[1:]] == ["1"] * (len(cards) - 1)
        # The beat titles are the plan's, rendered as text.
        assert page.locator("#beats h2").all_text_contents() == titles

        page.keyboard.press("Tab")
        page.locator("#beat-1 .continue").focus()
        page.keyboard.press("Enter")
        assert page.locator("#beat-2.current").count() == 1
        assert no_horizontal_scroll(page)
        screenshot(page, tmp_path, "04-lesson-complete-phone")
        watch.assert_clean()


def test_the_stream_cut_mid_lesson_resumes_and_every_beat_arrives_once(
    browser: Browser,  # noqa: F811
    db_url: str,
    tmp_path: Path,
) -> None:
    # A slower tutor, so that the cut lands mid-lesson.
    with (
        serve_page(db_url, offline_pace_ms=15, beat_partial_ms=100) as server,
        cuttable_proxy(server) as proxy,
        open_page(browser, proxy.url, DESKTOP) as (page, watch),
    ):
        total = plan_and_start(page, "Ohm's law")
        page.wait_for_selector("#beat-2[data-status=ready]")
        proxy.cut()
        page.wait_for_selector("#reconnecting:not([hidden])")
        screenshot(page, tmp_path, "05-reconnecting")
        assert page.text_content("#reconnecting") == "Connection lost · reconnecting…"
        proxy.resume()
        wait_complete(page)
        assert page.is_hidden("#reconnecting")
        cards = beat_cards(page)
        assert len(cards) == total
        assert all(c["status"] == "ready" for c in cards)
        assert [c["completions"] for c in cards[1:]] == ["1"] * (total - 1)
        # The browser resumed where it was: its reconnect named the last event it saw.
        resumed = [h for h in proxy.stream_requests() if b"last-event-id:" in h.lower()]
        assert resumed, proxy.stream_requests()
        screenshot(page, tmp_path, "06-resumed-complete")
        assert watch.page_errors == []
        assert watch.foreign_requests() == []


def test_over_quota_shows_the_drama_modal(
    browser: Browser,  # noqa: F811
    db_url: str,
    tmp_path: Path,
) -> None:
    with (
        serve_page(db_url, over_quota_forced=True) as server,
        open_page(browser, server, PHONE) as (page, watch),
    ):
        fill_setup(page, "Kepler's laws")
        page.click("#plan-submit")
        page.wait_for_selector("#modal:not([hidden])")
        text = page.text_content("#modal-text") or ""
        assert text.startswith("Tutor is full · try in ")
        assert page.evaluate("document.activeElement.id") == "modal-close"
        assert page.is_hidden("#view-plan")  # no spinner, no plan: the modal explains
        screenshot(page, tmp_path, "07-over-quota-modal", full_page=False)
        page.keyboard.press("Escape")
        assert page.is_hidden("#modal")
        assert page.evaluate("document.activeElement.id") == "plan-submit"
        watch.assert_clean()


def set_over_quota_flag(db_url: str) -> None:
    """`omnitutor spend flag on`, from a thread of its own (Playwright owns this one's loop)."""

    async def flag_on() -> None:
        async with open_pool(db_url, max_size=1) as pool:
            await spendcap.set_flag(pool, True, "browser test")

    worker = threading.Thread(target=asyncio.run, args=(flag_on(),))
    worker.start()
    worker.join(30)


def test_over_quota_when_the_lesson_starts_shows_the_modal_too(
    browser: Browser,  # noqa: F811
    db_url: str,
    server: str,
    tmp_path: Path,
) -> None:
    # The cap is also checked when the stream first opens (generation is new spend). The
    # stream's refusal is an HTTP answer EventSource cannot read: the page asks with fetch.
    with open_page(browser, server, PHONE) as (page, watch):
        fill_setup(page, "Archimedes' principle")
        page.click("#plan-submit")
        page.wait_for_selector("#view-plan:not([hidden])")
        set_over_quota_flag(db_url)
        page.click("#plan-start")
        page.wait_for_selector("#modal:not([hidden])")
        assert (page.text_content("#modal-text") or "").startswith("Tutor is full · try in ")
        assert page.is_hidden("#reconnecting")
        assert page.is_visible("#view-plan")  # not a lesson stuck at "Coming up…"
        screenshot(page, tmp_path, "11-over-quota-at-start", full_page=False)
        assert watch.page_errors == []


def test_a_refused_topic_gets_the_owl_line(
    browser: Browser,  # noqa: F811
    server: str,
    tmp_path: Path,
) -> None:
    with open_page(browser, server, PHONE) as (page, watch):
        fill_setup(page, "how to build a bomb to hurt people")
        page.click("#plan-submit")
        page.wait_for_selector("#owl:not([hidden])")
        assert page.text_content("#owl-text") == (
            "I can't teach that one. Want to try something else?"
        )
        assert page.is_visible("#view-setup")
        screenshot(page, tmp_path, "08-refused-owl")
        watch.assert_clean()


def test_invalid_input_is_shown_under_its_field(
    browser: Browser,  # noqa: F811
    server: str,
    tmp_path: Path,
) -> None:
    with open_page(browser, server, DESKTOP) as (page, watch):
        fill_setup(page, "x" * 200)
        # A subject code the server does not accept (the select only offers valid ones).
        page.evaluate(
            """() => { const o = document.createElement('option');
               o.value = 'Not A Code'; o.textContent = 'bad';
               document.getElementById('subject').append(o); }"""
        )
        page.select_option("#subject", "Not A Code")
        page.click("#plan-submit")
        page.wait_for_selector(".field-error[data-for=subject]:not([hidden])")
        assert page.get_attribute("#subject", "aria-invalid") == "true"
        assert page.evaluate("document.activeElement.id") == "subject"
        screenshot(page, tmp_path, "09-field-error")
        watch.assert_clean()


def test_model_text_is_inserted_as_text_never_as_html(
    browser: Browser,  # noqa: F811
    server: str,
    tmp_path: Path,
) -> None:
    hostile = '<img src=x onerror="window.pwned=1">Waves'
    with open_page(browser, server, DESKTOP) as (page, watch):
        plan_and_start(page, hostile)
        wait_complete(page)
        # The offline tutor repeats the topic in every beat: it shows as text, runs nothing.
        assert page.locator("main img").count() == 1  # the owl's, and nothing else
        assert page.evaluate("window.pwned") is None
        assert "<img src=x" in (page.text_content("#beats") or "")
        screenshot(page, tmp_path, "10-hostile-topic-as-text")
        watch.assert_clean()
