#!/bin/sh
# Set up (once) and run the test suite: creates .venv if needed, installs the pinned
# requirements when they changed (setup.sh --dev), then runs the linters, the duplicate-code
# check and pytest.
# pytest runs on every core (pytest-xdist, at most 4 workers, one test file per worker at a time, so a
# file's module fixtures are built once); extra arguments go to pytest and come after, so `-n 0` runs
# it in this one process (for --pdb or -s).
set -eu
cd "$(dirname "$0")"
sh setup.sh --dev
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
# No block of 6+ lines repeated in the product's packages (comments, docstrings, imports aside).
.venv/bin/python -m pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --score=n \
    segcore data_prepare inference_server predict review viewer bench
exec .venv/bin/python -m pytest -n logical --maxprocesses 4 --dist loadfile "$@"
