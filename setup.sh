#!/bin/sh
# Create .venv (if needed) and install the pinned requirements (when they changed):
#   sh setup.sh          # runtime: requirements.txt
#   sh setup.sh --dev    # runtime and test tools: requirements-dev.txt (includes requirements.txt)
# Says what it does; pip shows each package and its download progress.
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
started=$(date +%s)
if [ ! -x .venv/bin/python ]; then
    echo "setup.sh: creating .venv with $("$PYTHON" --version 2>&1) ($PYTHON)"
    "$PYTHON" -m venv .venv
fi
runtime=$(sha256sum requirements.txt | cut -d' ' -f1)
dev=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "${1:-}" = "--dev" ]; then file=requirements-dev.txt; wanted=$dev; else file=requirements.txt; wanted=$runtime; fi
# A stamp per install; a dev install also covers the runtime requirements.
if [ "$(cat ".venv/.stamp-$file" 2>/dev/null)" != "$wanted" ]; then
    echo "setup.sh: updating pip in .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    echo "setup.sh: installing $file into .venv (a minute or more, torch being most of it; pip lists each package below)"
    .venv/bin/python -m pip install --progress-bar on -r "$file"
    echo "$wanted" > ".venv/.stamp-$file"
    if [ "$file" = requirements-dev.txt ]; then echo "$runtime" > .venv/.stamp-requirements.txt; fi
    echo "setup.sh: $file installed in $(($(date +%s) - started)) s"
else
    echo "setup.sh: .venv already holds $file (nothing to install)"
fi
