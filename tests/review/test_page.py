"""The review station's page in a real browser (Debian's Chromium, Playwright): the list in
verdict order, a case opened in the viewer, its organs hidden and shown, the slices scrolled."""

from __future__ import annotations

import os

from segcore.labels import ORGAN_COLORS, ORGAN_IDS
from tests.browser import browser_page, colour_count, full_overlay, needs_chromium, pixels
from tests.review.conftest import REVIEW_ORDER, review_station

pytestmark = needs_chromium
LIVER = ORGAN_IDS["liver"]


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
