#!/bin/sh
# Serve the segmentation over HTTP (uvicorn):
#   sh inference_server/run.sh [--host 127.0.0.1] [--port 8000] [--weights DIR] [--device auto|cpu|cuda]
# Other settings come from SEGMENT_* environment variables (inference_server/settings.py).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m inference_server "$@"
