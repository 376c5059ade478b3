"""Browser-test support: Debian's Chromium driven by Playwright (nothing downloaded at test time),
and the pixels of what it drew."""

from __future__ import annotations

import io
import shutil
from contextlib import contextmanager

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: install Debian's chromium package")
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
"""Headless, offline; WebGL2 is drawn by SwiftShader on the CPU (``--disable-gpu``)."""


@contextmanager
def browser_page(width: int = 1500, height: int = 1000):
    """A page in a fresh headless Chromium; its console errors are collected in ``page.errors``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.errors = []
        page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        try:
            yield page
        finally:
            browser.close()


def pixels(png: bytes) -> np.ndarray:
    """A screenshot as a ``(height, width, 3)`` uint8 array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def colour_count(image: np.ndarray, rgb, tolerance: int = 10) -> int:
    """How many pixels are within ``tolerance`` of ``rgb`` in every channel."""
    return int((np.abs(image.astype(int) - np.asarray(rgb)).max(axis=-1) <= tolerance).sum())


def full_overlay(page) -> None:
    """The viewer's overlay opacity at 1, so organ pixels carry their exact colours."""
    page.fill(".viewer-opacity", "1")
    page.dispatch_event(".viewer-opacity", "input")
