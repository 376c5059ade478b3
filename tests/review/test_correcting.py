"""Correcting a mask in the review station, in a real browser (Debian's Chromium, Playwright): a
stroke painted on the slice shown is read back, voxel by voxel, from the saved file; undo and redo;
accept; a save without the token; no save for a case still loading."""

from __future__ import annotations

import contextlib

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from segcore.labels import ORGAN_COLORS, ORGAN_IDS
from tests.browser import browser_page, colour_count, full_overlay, needs_chromium, pixels
from tests.review.conftest import review_station

pytestmark = needs_chromium
ESOPHAGUS = ORGAN_IDS["esophagus"]  # absent from the reference labels: every voxel of it is painted
TURNED = np.array([[1, -1], [0, 1], [2, -1]])
"""A reorientation (nibabel's ornt) of b_review's CT and mask: axes swapped, two flipped, so that a
voxel order or a flip gone wrong between the viewer and the file puts the stroke elsewhere."""


def turn(path) -> None:
    image = nib.load(path)
    nib.save(image.as_reoriented(TURNED), path)


def shown(page, case: str, verdict: str) -> None:
    page.wait_for_selector(f"#status:text-is('{case}: {verdict}')", timeout=60_000)
    page.wait_for_selector("canvas[data-ready='1']")


def correcting(page) -> None:
    page.click("#correct")
    page.wait_for_selector("canvas[data-editing='1']")
    page.select_option("#organ", str(ESOPHAGUS))


def stroke(page, dy: float) -> None:
    """Drag the pen across the middle of the canvas, ``dy`` pixels below its centre."""
    box = page.locator("canvas").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 + dy
    page.mouse.move(x - 80, y)
    page.mouse.down()
    for step in range(1, 17):
        page.mouse.move(x - 80 + step * 10, y)
    page.mouse.up()


def saved(page, outputs, text: str = "saved as corrected") -> np.ndarray:
    """Click Save; the corrected labels as nibabel reads them, once the page says they were saved."""
    count = page.locator("#review-state").text_content()
    page.click("#save")
    page.wait_for_function(
        "([text, before]) => { const s = document.querySelector('#review-state').textContent;"
        " return s.includes(text) && s !== before; }",
        arg=[text, count],
        timeout=60_000,
    )
    return np.asarray(nib.load(outputs / "b_review_corrected.nii.gz").dataobj)


def painted_slice(model: np.ndarray, corrected: np.ndarray, axis: int) -> set[int]:
    changed = np.argwhere(model != corrected)
    assert len(changed) > 0
    assert set(corrected[model != corrected].tolist()) == {ESOPHAGUS}
    return set(changed[:, axis].tolist())


def test_a_painted_stroke_is_saved_on_the_slice_shown_and_undo_and_redo_follow(folders):
    inputs, outputs = folders
    for path in (inputs / "b_review_0000.nii.gz", outputs / "b_review.nii.gz"):
        turn(path)
    model = np.asarray(nib.load(outputs / "b_review.nii.gz").dataobj)
    codes = nib.aff2axcodes(nib.load(outputs / "b_review.nii.gz").affine)
    axis = [code in "SI" for code in codes].index(True)  # the array axis the axial view steps
    with review_station(outputs) as url, browser_page(1400, 1100) as page:
        page.goto(url)
        page.wait_for_selector("#cases tbody tr")
        page.click("#cases tr[data-case='b_review']")
        shown(page, "b_review", "review")
        assert page.is_disabled("#save") and page.is_hidden("#edit-tools")
        correcting(page)
        assert page.is_visible("#edit-keys") and "Ctrl" in page.text_content("#edit-keys")
        slice_number, count = int(page.get_attribute("canvas", "data-slice")), model.shape[axis]
        expected = slice_number - 1 if codes[axis] == "S" else count - slice_number  # counted from inferior
        stroke(page, 0)
        page.wait_for_selector("#undo:not([disabled])")
        first = saved(page, outputs)
        assert painted_slice(model, first, axis) == {expected}
        assert (first == ESOPHAGUS).sum() >= 8  # the stroke crosses several 3 mm voxels
        rows = np.argwhere(first == ESOPHAGUS)[:, 0]  # TURNED: the array's first axis runs up the screen
        assert rows.max() - rows.min() <= 3, "not the straight stroke drawn: the page moved under the pen?"
        corrected = sitk.ReadImage(str(outputs / "b_review_corrected.nii.gz"))
        ct = sitk.ReadImage(str(inputs / "b_review_0000.nii.gz"))
        assert corrected.GetSize() == ct.GetSize() and corrected.GetDirection() == ct.GetDirection()
        assert np.allclose(corrected.GetOrigin(), ct.GetOrigin())
        assert np.allclose(corrected.GetSpacing(), ct.GetSpacing())

        stroke(page, 60)  # a second stroke lower down, then undone: the next save is the first again
        page.wait_for_selector("#redo[disabled]")
        page.click("#undo")
        page.wait_for_selector("#redo:not([disabled])")
        assert np.array_equal(saved(page, outputs, "replaced the earlier review"), first)
        page.keyboard.press("Control+Shift+Z")  # redo
        both = saved(page, outputs)
        assert (both == ESOPHAGUS).sum() > (first == ESOPHAGUS).sum()
        assert np.array_equal(both[first == ESOPHAGUS], first[first == ESOPHAGUS])

        page.keyboard.press("e")  # erase over the first stroke, with a brush wide enough to cover it
        assert page.get_attribute("#tools button[value='erase']", "aria-pressed") == "true"
        for _ in range(6):
            page.keyboard.press("]")
        assert page.text_content("#brush-size") == "9"
        stroke(page, 0)
        page.wait_for_selector("#undo:not([disabled])")
        erased = saved(page, outputs)
        assert not (erased[first == ESOPHAGUS] == ESOPHAGUS).any()
        assert (erased == ESOPHAGUS).sum() > 8  # the second stroke stays
        assert page.text_content("#cases tr[data-case='b_review'] td.reviewed") == "corrected"

        # Reopened, the case shows its correction.
        page.click("#cases tr[data-case='a_ok']")
        shown(page, "a_ok", "ok")
        page.click("#accept")
        page.wait_for_selector("#cases tr[data-case='a_ok'] td.reviewed:text-is('accepted')")
        page.click("#cases tr[data-case='b_review']")
        shown(page, "b_review", "review")
        assert "corrected at" in page.text_content("#review-state")
        assert page.get_attribute("canvas", "data-editing") != "1"
        full_overlay(page)
        reviews = (outputs / "reviews.csv").read_text()
        page.keyboard.press("Control+S")  # not correcting: nothing is saved
        # Painted on one slice, the stroke is drawn at its full colour (a slice between two voxels would
        # show it blended, faded).
        esophagus = colour_count(pixels(page.locator("canvas").screenshot()), ORGAN_COLORS[ESOPHAGUS], tolerance=6)
        assert esophagus > 500, esophagus
        assert (outputs / "reviews.csv").read_text() == reviews
        assert [e for e in page.errors if "Failed to load resource" not in e] == []
    assert np.array_equal(np.asarray(nib.load(outputs / "b_review.nii.gz").dataobj), model)  # never written


def test_no_save_without_the_token_and_none_for_a_case_still_loading(folders):
    _, outputs = folders
    with review_station(outputs) as url, browser_page(1400, 1100) as page:
        page.goto(url)
        page.wait_for_selector("#cases tbody tr")
        page.click("#cases tr[data-case='b_review']")
        shown(page, "b_review", "review")
        correcting(page)
        stroke(page, 0)
        page.wait_for_selector("#undo:not([disabled])")

        def wrong_token(route) -> None:
            route.continue_(headers={**route.request.headers, "x-review-token": "guessed"})

        page.route("**/api/cases/b_review/correction", wrong_token)
        page.click("#save")
        page.wait_for_selector("#review-state.error")
        assert "not saved: 403" in page.text_content("#review-state")
        page.unroute("**/api/cases/b_review/correction")
        assert not (outputs / "b_review_corrected.nii.gz").exists()

        held, asked = [], []
        page.route("**/api/cases/e_ok/ct", lambda route: held.append(route))
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
        page.click("#cases tr[data-case='e_ok']")  # the painting is not saved: the page asks, and stays
        assert asked and "not saved" in asked[0] and page.text_content("#case-title").startswith("b_review")
        page.once("dialog", lambda dialog: dialog.accept())
        with page.expect_request("**/api/cases/e_ok/ct"):
            page.click("#cases tr[data-case='e_ok']")  # its CT held: the painted b_review is still drawn
        assert page.is_disabled("#save") and page.is_disabled("#accept")
        page.keyboard.press("Control+S")
        page.wait_for_timeout(1000)
        assert not list(outputs.glob("*_corrected.nii.gz")) and not (outputs / "reviews.csv").exists()
        with contextlib.suppress(Exception):
            held[0].continue_()
        shown(page, "e_ok", "ok")
        assert page.get_attribute("canvas", "data-editing") != "1"  # b_review's drawing went with it
