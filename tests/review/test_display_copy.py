"""A scan larger in-plane than the viewer shows opens as a display copy (every second voxel in-plane,
8 bits) lying exactly where the scan does, then at full resolution on demand and before a
correction, which is saved on the scan's own grid (a real browser: Debian's Chromium, Playwright)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from segcore.labels import ORGAN_COLORS, ORGAN_IDS
from tests.browser import browser_page, full_overlay, needs_chromium, pixels
from tests.review.conftest import review_station

pytestmark = needs_chromium
LIVER = ORGAN_IDS["liver"]
FACTOR = 3  # 122 x 101 in-plane becomes 366 x 303: a display copy of every second voxel, 183 x 152


def finer(path, order: str) -> None:
    """``path`` on a grid FACTOR times finer in-plane over the same field of view (voxels repeated)."""
    image = nib.load(path)
    data = np.repeat(np.repeat(np.asarray(image.dataobj), FACTOR, axis=0), FACTOR, axis=1)
    affine = image.affine.copy()
    affine[:3, :2] /= FACTOR
    affine[:3, 3] -= affine[:3, :2].sum(axis=1) * (FACTOR - 1) / 2  # the first fine voxel's centre
    nib.save(nib.Nifti1Image(data.astype(order), affine), path)


def liver(page) -> tuple[int, np.ndarray]:
    """The liver's pixels on the canvas: their count and their centroid (x, y)."""
    image = pixels(page.locator("canvas").screenshot())
    found = np.abs(image.astype(int) - np.asarray(ORGAN_COLORS[LIVER])).max(axis=-1) <= 6
    return int(found.sum()), np.argwhere(found).mean(axis=0)[::-1]


def test_a_large_scan_opens_as_a_display_copy_in_place_then_at_full_resolution(folders):
    inputs, outputs = folders
    for case in ("b_review", "c_fail"):
        finer(inputs / f"{case}_0000.nii.gz", "int16")
        finer(outputs / f"{case}.nii.gz", "uint8")
    with review_station(outputs) as url, browser_page(1400, 1400) as page:
        page.goto(url)
        page.wait_for_selector("#cases tbody tr")
        page.click("#cases tr[data-case='b_review']")
        page.wait_for_selector("#status:text-is('b_review: review')", timeout=60_000)
        assert page.get_attribute("canvas", "data-resolution") == "display"
        assert page.get_attribute("canvas", "data-columns") == "183"
        full_overlay(page)
        count, centre = liver(page)
        page.click(".viewer-full")
        page.wait_for_selector("canvas[data-resolution='full']", timeout=60_000)
        assert page.get_attribute("canvas", "data-columns") == "366" and page.is_hidden(".viewer-full")
        full_count, full_centre = liver(page)
        assert count > 2000 and abs(count - full_count) < 0.05 * full_count, (count, full_count)
        assert np.abs(centre - full_centre).max() < 3, (centre, full_centre)  # in place, to a few pixels

        # Correcting a display copy swaps in the scan first: the correction is on its own grid.
        page.click("#cases tr[data-case='c_fail']")
        page.wait_for_selector("#status:text-is('c_fail: fail')", timeout=60_000)
        assert page.get_attribute("canvas", "data-resolution") == "display"
        page.click("#correct")
        page.wait_for_selector("canvas[data-editing='1']", timeout=60_000)
        assert page.get_attribute("canvas", "data-resolution") == "full"
        page.click("#save")
        page.wait_for_selector("#review-state:has-text('saved as corrected')", timeout=60_000)
        assert [e for e in page.errors if "Failed to load resource" not in e] == []
    saved = nib.load(outputs / "c_fail_corrected.nii.gz")
    model = nib.load(outputs / "c_fail.nii.gz")
    assert saved.shape == (366, 303, 30) and np.allclose(saved.affine, model.affine, atol=1e-4)
    assert np.array_equal(np.asarray(saved.dataobj), np.asarray(model.dataobj))  # nothing painted: the same
