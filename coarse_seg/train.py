"""Train the coarse network on the store's whole-scan arrays.

sh coarse_seg/run.sh --nproc 2 --config coarse_seg/config.yaml [key=value ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from segcore.store import COARSE_IMAGE, COARSE_LABEL
from segcore.training.cli import main
from segcore.training.engine import Stage

STAGE = Stage(name="coarse", image_key=COARSE_IMAGE, label_key=COARSE_LABEL)

if __name__ == "__main__":
    sys.exit(main(STAGE, Path(__file__).with_name("config.yaml")))
