#!/bin/sh
# Set up (once) and run the test suite: creates .venv if needed, installs the pinned
# requirements when they changed (setup.sh --dev), then runs the linter and pytest.
# Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")"
sh setup.sh --dev
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
exec .venv/bin/python -m pytest "$@"
