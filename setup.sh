#!/bin/sh
# Create .venv (if needed) and install the pinned requirements (when they changed):
#   sh setup.sh          # runtime: requirements.txt
#   sh setup.sh --dev    # runtime and test tools: requirements-dev.txt (includes requirements.txt)
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
runtime=$(sha256sum requirements.txt | cut -d' ' -f1)
dev=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "${1:-}" = "--dev" ]; then file=requirements-dev.txt; wanted=$dev; else file=requirements.txt; wanted=$runtime; fi
# A stamp per install; a dev install also covers the runtime requirements.
if [ "$(cat ".venv/.stamp-$file" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$file"
    echo "$wanted" > ".venv/.stamp-$file"
    if [ "$file" = requirements-dev.txt ]; then echo "$runtime" > .venv/.stamp-requirements.txt; fi
fi
