"""The service's web page in a real browser: Debian's Chromium driven by Playwright against a real uvicorn.

Skipped, saying why, where no Chromium is installed (``.ci/run`` installs Debian's ``chromium``
package; nothing is downloaded at test time: Playwright is pointed at the system browser).
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest

from inference_server.local import LocalServer
from segcore.testing import write_tiny_weights

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: install Debian's chromium package")
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
NOTICE = "trained on phantoms: not for real scans"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    weights = write_tiny_weights(tmp_path_factory.mktemp("weights"), notice=NOTICE)
    with LocalServer(weights) as url:
        yield url


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        yield browser.new_page(viewport={"width": 1500, "height": 1000})
        browser.close()


def test_a_ct_upload_shows_the_preview_the_organ_table_and_the_downloads(server, page, real_data, tmp_path):
    page.goto(server)
    page.set_input_files("#file", str(real_data / "abdomen_ct_3mm.nii.gz"))
    page.click("#send")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    assert page.text_content("#status").startswith("Done:")
    assert page.locator("#organs tbody tr").count() >= 1
    assert page.eval_on_selector("#preview", "image => image.naturalHeight") >= 360  # the PNG decoded
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
