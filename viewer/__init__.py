"""The organ viewer's static files (``viewer.js``, ``viewer.css``, the vendored NiiVue): the web
pages of ``inference_server`` and ``review`` both serve this folder under ``/viewer/``."""

from pathlib import Path

STATIC = Path(__file__).with_name("static")
"""The folder to serve (only page assets: this file, the README and the refresh script stay out of it)."""
