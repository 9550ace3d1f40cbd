"""Browser tests of the page's conversation and account features: ask, attempt, adjust and
plan iterate (issue 10), the library and "save my work" (issue 12), against the real
endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page

from tests.browser import (
    DESKTOP,
    PHONE,
    beat_cards,
    browser,  # noqa: F401  (the session fixture)
    fill_setup,
    open_page,
    screenshot,
)
from tests.test_page_browser import serve_page, server, wait_complete  # noqa: F401


def plan(page: Page, topic: str) -> dict[str, Any]:
    """Setup form → plan; returns the plan's JSON answer as the page received it."""
    fill_setup(page, topic)
    with page.expect_response("**/v1/plan") as answer:
        page.click("#plan-submit")
    page.wait_for_selector("#view-plan:not([hidden])")
    body: dict[str, Any] = answer.value.json()
    return body


def start(page: Page) -> None:
    page.click("#plan-start")
    page.wait_for_selector("#view-lesson:not([hidden])")


def test_ask_answers_on_the_page(
    browser: Browser,  # noqa: F811
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    with open_page(browser, server, PHONE) as (page, watch):
        plan(page, "Hooke's law")
        start(page)
        wait_complete(page)
        page.fill("#ask-question", "Why does the spring pull back?")
        page.keyboard.press("Enter")
        page.wait_for_selector("#answers li")
        assert page.text_content("#answers li .q") == "Why does the spring pull back?"
        assert (page.text_content("#answers li .a") or "").strip()
        assert page.input_value("#ask-question") == ""
        screenshot(page, tmp_path, "20-ask-answered")
        watch.assert_clean()


def test_adjust_re_streams_the_later_beats(
    browser: Browser,  # noqa: F811
    db_url: str,
    tmp_path: Path,
) -> None:
    with (
        serve_page(db_url, offline_pace_ms=15, beat_partial_ms=100) as base,
        open_page(browser, base, DESKTOP) as (page, watch),
    ):
        plan(page, "Ohm's law")
        start(page)
        page.wait_for_selector("#beat-2[data-status=ready]")
        page.click("#beat-1 .continue")  # the student is on beat 2
        before = {c["ord"]: c for c in beat_cards(page)}
        with page.expect_response("**/adjust") as answer:
            page.click("#adjust-harder")
        assert answer.value.status == 200
        revision = answer.value.json()["revision_num"]
        assert revision >= 2
        page.wait_for_selector(f"#beats[data-revision='{revision}']")
        screenshot(page, tmp_path, "21-adjusted-restreaming")
        wait_complete(page)
        after = beat_cards(page)
        assert all(c["status"] == "ready" for c in after)
        # Beats up to the student's survive untouched; the later ones came again, once.
        assert [c["completions"] for c in after[:2]] == [
            before["1"]["completions"],
            before["2"]["completions"],
        ]
        assert [c["completions"] for c in after[2:]] == ["1"] * (len(after) - 2)
        screenshot(page, tmp_path, "22-adjusted-complete")
        watch.assert_clean()


def test_attempt_on_a_test_beat_gets_a_verdict(
    browser: Browser,  # noqa: F811
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    with open_page(browser, server, DESKTOP) as (page, watch):
        lesson_id = plan(page, "Kepler's laws")["lesson_id"]
        start(page)
        wait_complete(page)
        lesson = page.request.get(f"{server}/v1/lesson/{lesson_id}").json()
        test_beat = next(b for b in lesson["beats"] if b["kind"] == "test")
        answer = test_beat["content_json"]["problem"]["answer"]
        card = page.locator(f"#beat-{test_beat['ord']}")
        card.locator("label", has_text=answer).click()
        card.locator("button[type=submit]").click()
        card.locator(".verdict.correct").wait_for()
        screenshot(page, tmp_path, "23-attempt-correct")
        watch.assert_clean()


def test_iterate_revises_the_plan_before_the_lesson_starts(
    browser: Browser,  # noqa: F811
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    with open_page(browser, server, PHONE) as (page, watch):
        first = plan(page, "Newton's laws")
        with page.expect_response("**/v1/plan") as answer:
            page.click(".chip[data-chip=shorter]")
        assert answer.value.status == 200
        revised = answer.value.json()
        assert revised["lesson_id"] == first["lesson_id"]
        page.wait_for_selector("#toast:not([hidden])")
        titles = page.locator("#plan-beats .title").all_text_contents()
        assert titles == [b["title"] for b in revised["plan"]["beats"]]
        assert page.is_visible("#iterate-form")
        screenshot(page, tmp_path, "24-plan-iterated")
        start(page)
        wait_complete(page)
        assert len(beat_cards(page)) == len(revised["plan"]["beats"])
        watch.assert_clean()


def test_the_library_finds_the_lesson_after_a_reload(
    browser: Browser,  # noqa: F811
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    with open_page(browser, server, DESKTOP) as (page, watch):
        lesson_id = plan(page, "Bernoulli's principle")["lesson_id"]
        start(page)
        wait_complete(page)
        total = len(beat_cards(page))
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        # The setup view offers it to pick up again, and so does the library.
        page.wait_for_selector(f"#recent-list button[data-lesson-id='{lesson_id}']")
        page.click("#nav-library")
        entry = page.locator(f"#library-list button[data-lesson-id='{lesson_id}']")
        entry.wait_for()
        assert "Bernoulli's principle" in (entry.text_content() or "")
        screenshot(page, tmp_path, "25-library")
        entry.click()
        page.wait_for_selector("#view-lesson:not([hidden])")
        page.wait_for_selector("#lesson-done:not([hidden])")
        cards = beat_cards(page)
        assert len(cards) == total
        assert all(c["status"] == "ready" for c in cards)
        screenshot(page, tmp_path, "26-library-lesson")
        watch.assert_clean()


def test_save_my_work_points_at_the_local_outbox(
    browser: Browser,  # noqa: F811
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    with open_page(browser, server, PHONE) as (page, watch):
        page.click("#nav-save")
        page.fill("#save-email", "student@example.com")
        with page.expect_response("**/v1/auth/magic-link") as answer:
            page.click("#save-send")
        assert answer.value.status == 202
        page.wait_for_selector("#save-sent:not([hidden])")
        text = page.text_content("#save-sent") or ""
        assert "student@example.com" in text
        assert "omnitutor auth outbox" in text
        screenshot(page, tmp_path, "27-save-my-work")
        watch.assert_clean()
