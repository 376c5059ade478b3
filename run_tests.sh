#!/bin/sh
# Set up (once) and run the test suite: creates .venv if needed, installs the pinned
# requirements when they changed (setup.sh --dev), then runs the linters, the duplicate-code
# check and pytest.
# Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")"
sh setup.sh --dev
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
# No block of 6+ lines repeated in the product's packages (comments, docstrings, imports aside).
.venv/bin/python -m pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --score=n \
    segcore data_prepare inference_server predict review viewer bench
exec .venv/bin/python -m pytest "$@"
