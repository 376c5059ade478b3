"""The service's web page in a real browser: Debian's Chromium driven by Playwright against a real uvicorn.

Skipped, saying why, where no Chromium is installed (``.ci/run`` installs Debian's ``chromium``
package; nothing is downloaded at test time: Playwright is pointed at the system browser).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from inference_server.local import LocalServer
from segcore.labels import ORGAN_COLORS
from testkit import write_tiny_weights
from tests.browser import browser_page, colour_count, full_overlay, needs_chromium, pixels

pytestmark = needs_chromium
NOTICE = "trained on phantoms: not for real scans"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    weights = write_tiny_weights(tmp_path_factory.mktemp("weights"), notice=NOTICE)
    with LocalServer(weights) as url:
        yield url


@pytest.fixture(scope="module")
def page():
    with browser_page() as page:
        yield page


def test_a_ct_upload_shows_the_preview_the_organ_table_and_the_downloads(server, page, real_data, tmp_path):
    page.goto(server)
    page.set_input_files("#file", str(real_data / "abdomen_ct_3mm.nii.gz"))
    page.click("#send")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    assert page.text_content("#status").startswith("Done:")
    assert page.locator("#organs tbody tr").count() >= 1
    assert page.eval_on_selector("#preview", "image => image.naturalHeight") >= 360  # the PNG decoded
    page.wait_for_selector("canvas[data-ready='1']", timeout=60_000)  # the viewer shows the upload and its mask
    print(f"first slice {page.get_attribute('canvas', 'data-first-slice-ms')} ms after the answer")
    assert page.text_content("#verdict").startswith("Quality check:")
    assert NOTICE in page.text_content("#notice")
    links = page.locator("#downloads a")
    assert links.first.get_attribute("download") == "abdomen_ct_3mm_labels.nii.gz"
    with page.expect_download() as downloaded:
        links.first.click()
    saved = tmp_path / "labels.nii.gz"
    downloaded.value.save_as(saved)
    assert saved.read_bytes()[:2] == b"\x1f\x8b"  # the gzip-ed NIfTI itself
    page.screenshot(path=str(Path(tmp_path) / "page.png"), full_page=True)


def test_a_zip_of_a_2d_slice_is_refused_in_words(server, page, real_data, tmp_path):
    archive = tmp_path / "slice.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.write(real_data / "single_slice_ct.dcm", "slice.dcm")
    archive.write_bytes(buffer.getvalue())
    page.goto(server)
    page.set_input_files("#file", str(archive))
    page.click("#send")
    page.wait_for_selector("#status.error", timeout=60_000)
    message = page.text_content("#status")
    assert message.startswith("The file is not a 3-D CT the service can segment") and "2-D" in message, message
    assert page.is_hidden("#result")


def shown_in_viewer(page, server: str, upload: Path, timeout_ms: int) -> None:
    """Upload a file from a fresh page and wait until the viewer shows it, with no error on the console."""
    page.goto(server)
    page.errors.clear()
    page.set_input_files("#file", str(upload))
    page.click("#send")
    page.wait_for_selector("canvas[data-ready='1']", timeout=timeout_ms)
    assert page.errors == []


def test_the_viewer_scrolls_and_a_hidden_organ_leaves_the_canvas(server, page, real_data, tmp_path):
    upload = tmp_path / "scan"  # a name that says nothing: the service and the viewer go by the bytes
    upload.write_bytes((real_data / "abdomen_ct_3mm.nii.gz").read_bytes())
    shown_in_viewer(page, server, upload, 120_000)
    canvas = page.locator("canvas")
    full_overlay(page)
    start = int(canvas.get_attribute("data-slice"))
    before = pixels(canvas.screenshot())
    canvas.click()
    page.keyboard.press("ArrowUp")
    assert int(canvas.get_attribute("data-slice")) == start + 1
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert int(canvas.get_attribute("data-slice")) == start - 1
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -120)
    page.wait_for_selector(f"canvas:not([data-slice='{start - 1}'])")
    assert (pixels(canvas.screenshot()) != before).any()
    # Every organ the tiny model found is hidden, row by row: none of their colours stays on the canvas.
    labels = [int(row.get_attribute("data-label")) for row in page.locator("#organs tbody tr").all()]
    shown = pixels(canvas.screenshot())
    counts = {label: colour_count(shown, ORGAN_COLORS[label], tolerance=6) for label in labels}
    for label in labels:
        page.click(f"#organs tr[data-label='{label}']")
    page.wait_for_selector(f"canvas[data-hidden='{','.join(map(str, sorted(labels)))}']")
    hidden = pixels(canvas.screenshot())
    assert sum(counts.values()) > 200, counts
    assert sum(colour_count(hidden, ORGAN_COLORS[label], tolerance=6) for label in labels) < 0.02 * sum(counts.values())
    assert page.locator("#organs tr.organ-hidden").count() == len(labels)


def test_a_dicom_series_is_shown_from_the_copy_in_the_answer(server, page, real_data, tmp_path):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted((real_data / "abdomen_ct_dicom").iterdir()):
            bundle.write(path, path.name)
    shown_in_viewer(page, server, archive, 180_000)
    assert page.text_content(".viewer-slice").endswith("/ 20")  # the series' 20 slices, axial


def test_the_api_docs_page_works_offline_from_the_service_alone(server, page):
    """``/docs`` (Swagger UI) renders every operation from files the service serves: a hospital
    network without the internet gets the page too, and the browser asks no other host."""
    elsewhere = []
    page.on(
        "request", lambda request: request.url.startswith((server, "data:", "blob:")) or elsewhere.append(request.url)
    )
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock-summary-path[data-path='/segment']", timeout=30_000)
    assert page.locator(".opblock").count() >= 5
    assert elsewhere == [] and page.errors == [], (elsewhere, page.errors)
