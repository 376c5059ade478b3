"""The review station's page in a real browser (Debian's Chromium, Playwright): the list in
verdict order, a case opened in the viewer, its organs hidden and shown, the slices scrolled."""

from __future__ import annotations

import contextlib
import os

import nibabel as nib
import numpy as np
import pytest

from segcore.labels import ORGAN_COLORS, ORGAN_IDS
from tests.browser import browser_page, colour_count, full_overlay, needs_chromium, pixels
from tests.review.conftest import REVIEW_ORDER, bom, edit_table, in_row, no_case_column, review_station

pytestmark = needs_chromium
LIVER = ORGAN_IDS["liver"]


def liver_pixels(page) -> int:
    return colour_count(pixels(page.locator("canvas").screenshot()), ORGAN_COLORS[LIVER], tolerance=6)


def shown(page, case: str, verdict: str) -> None:
    page.wait_for_selector(f"#status:text-is('{case}: {verdict}')", timeout=60_000)
    page.wait_for_selector("canvas[data-ready='1']")


def nothing_shown(page) -> None:
    """No image and no organ table: the case's title and a message only."""
    assert page.locator("#viewer").is_hidden() and page.locator("#organs").is_hidden()
    assert page.get_attribute("canvas", "data-ready") != "1"


def script_errors(page) -> list[str]:
    """The page's errors, less the browser's notes of the error answers a test asked for."""
    return [error for error in page.errors if "Failed to load resource" not in error]


def test_the_list_in_verdict_order_and_a_case_in_the_viewer(folders, tmp_path):
    _, outputs = folders
    with review_station(outputs) as url, browser_page(1400, 1100) as page:
        page.goto(url)
        page.wait_for_selector("#cases tbody tr")
        assert [row.get_attribute("data-case") for row in page.locator("#cases tbody tr").all()] == REVIEW_ORDER
        assert page.text_content("#cases tbody tr:first-child td:nth-child(2)") == "fail"
        page.click("#cases tr[data-case='b_review']")
        page.wait_for_selector("canvas[data-ready='1']", timeout=60_000)
        assert page.errors == []
        canvas = page.locator("canvas")
        full_overlay(page)
        # The reference labels are the mask: the middle axial slice (16 of 30) holds the liver.
        assert canvas.get_attribute("data-slice") == "16"
        shown = colour_count(pixels(canvas.screenshot()), ORGAN_COLORS[LIVER], tolerance=6)
        assert shown > 2000, shown
        page.click(f"#organs tr[data-label='{LIVER}']")
        page.wait_for_selector(f"canvas[data-hidden='{LIVER}']")
        assert colour_count(pixels(canvas.screenshot()), ORGAN_COLORS[LIVER], tolerance=6) < 0.01 * shown
        page.click(f"#organs tr[data-label='{LIVER}']")
        page.wait_for_selector("canvas[data-hidden='']")
        assert colour_count(pixels(canvas.screenshot()), ORGAN_COLORS[LIVER], tolerance=6) > 0.9 * shown
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, 120)
        page.wait_for_selector("canvas:not([data-slice='16'])")
        page.click("button[value='multi']")
        assert page.get_attribute("button[value='multi']", "aria-pressed") == "true"
        page.click("#cases tr[data-case='d_failed']")  # no mask: said, not drawn
        page.wait_for_selector("#status.error")
        assert "no mask was written" in page.text_content("#status")
        page.click("#cases tr[data-case='c_fail']")
        page.wait_for_selector("#status:text-is('c_fail: fail')", timeout=60_000)
        if os.environ.get("REVIEW_SCREENSHOT"):
            page.screenshot(path=os.environ["REVIEW_SCREENSHOT"], full_page=True)


def test_a_case_that_cannot_be_shown_leaves_no_image_of_the_last_one(folders):
    inputs, outputs = folders
    (inputs / "c_fail_0000.nii.gz").unlink()  # its CT: 404
    with review_station(outputs) as url, browser_page(1400, 1100) as page:
        page.route("**/api/cases/a_ok/mask", lambda route: route.fulfill(status=403, json={"detail": "outside"}))
        page.route("**/api/cases/e_ok/ct", lambda route: route.fulfill(status=422, json={"detail": "not a CT"}))
        page.goto(url)
        page.wait_for_selector("#cases tbody tr")
        for number, (case, said) in enumerate(
            [("d_failed", "no mask was written"), ("c_fail", "404"), ("a_ok", "403"), ("e_ok", "422: not a CT")]
        ):
            page.click("#cases tr[data-case='b_review']")
            shown(page, "b_review", "review")
            if number == 0:
                full_overlay(page)
            assert liver_pixels(page) > 2000
            page.click(f"#cases tr[data-case='{case}']")
            page.wait_for_selector("#status.error", timeout=60_000)
            assert said in page.text_content("#status")
            assert page.text_content("#case-title").startswith(case)
            nothing_shown(page)
            assert said in page.text_content("#case-message")
        assert script_errors(page) == []


def release(route) -> None:
    """Let a held request go on (a request the page has given up on cannot)."""
    from playwright.sync_api import Error

    with contextlib.suppress(Error):
        route.continue_()


def test_a_late_answer_for_an_earlier_click_is_dropped(folders):
    _, outputs = folders
    mask = nib.load(outputs / "a_ok.nii.gz")  # a_ok's mask empty, so its images cannot pass for another case's
    nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine), outputs / "a_ok.nii.gz")
    with review_station(outputs) as url, browser_page(1400, 1100) as page:
        held = {}

        def hold(route) -> None:  # answered later, by release()
            held[route.request.url.split("/api/cases/")[1]] = route

        for path in ("a_ok/mask", "c_fail/ct"):
            page.route(f"**/api/cases/{path}", hold)
        page.goto(url)
        page.wait_for_selector("#cases tbody tr")

        def late_answer_dropped() -> None:
            from playwright.sync_api import TimeoutError as PlaywrightTimeout

            release(held.pop("a_ok/mask"))
            with pytest.raises(PlaywrightTimeout):
                page.wait_for_selector("#status:has-text('a_ok')", timeout=5000)

        # a_ok's answer comes after b_review is on the screen.
        with page.expect_request("**/api/cases/a_ok/mask"):
            page.click("#cases tr[data-case='a_ok']")
        page.click("#cases tr[data-case='b_review']")
        shown(page, "b_review", "review")
        full_overlay(page)
        before = liver_pixels(page)
        assert before > 2000
        late_answer_dropped()
        assert page.text_content("#case-title").startswith("b_review")
        assert page.get_attribute("#cases tr[data-case='b_review']", "aria-current") == "true"
        assert page.locator("#cases tr[aria-current]").count() == 1
        assert liver_pixels(page) > 0.9 * before

        # a_ok's answer comes while c_fail is still loading.
        with page.expect_request("**/api/cases/a_ok/mask"):
            page.click("#cases tr[data-case='a_ok']")
        with page.expect_request("**/api/cases/c_fail/ct"):
            page.click("#cases tr[data-case='c_fail']")
        late_answer_dropped()
        assert page.text_content("#case-title").startswith("c_fail")
        nothing_shown(page)
        release(held.pop("c_fail/ct"))
        shown(page, "c_fail", "fail")
        assert page.text_content("#case-title").startswith("c_fail") and liver_pixels(page) > 0.9 * before
        assert script_errors(page) == []


def test_a_damaged_table_is_listed_with_the_skipped_rows_named(folders):
    _, outputs = folders
    edit_table(outputs, in_row("b_review", b"review because", b"review b\xe9cause"))  # not UTF-8
    edit_table(outputs, in_row("e_ok", b"1500.0", b"nan"))
    edit_table(outputs, bom)
    with review_station(outputs) as url, browser_page(1400, 1100) as page:
        page.goto(url)
        page.wait_for_selector("#problems li")
        assert [row.get_attribute("data-case") for row in page.locator("#cases tbody tr").all()] == [
            "c_fail", "d_failed", "a_ok", "e_ok",
        ]  # fmt: skip
        assert "line 3: the quality_reasons field is not UTF-8 text" in page.text_content("#problems")
        page.click("#cases tr[data-case='e_ok']")
        shown(page, "e_ok", "ok")
        assert page.text_content(f"#organs tr[data-label='{LIVER}'] td:nth-child(2)") == "—"

        edit_table(outputs, no_case_column)
        page.reload()
        page.wait_for_selector("#problems li")
        assert "summary.csv has no case column" in page.text_content("#problems")
        assert page.locator("#cases tbody tr").count() == 0

        # An answer that is not JSON (a crash, a proxy's error page) is said in words.
        page.route("**/api/cases", lambda route: route.fulfill(status=500, body="Internal Server Error"))
        page.reload()
        page.wait_for_selector("#status.error")
        assert "500" in page.text_content("#status")
        assert "SyntaxError" not in page.text_content("body") and "JSON" not in page.text_content("body")
        assert script_errors(page) == []
