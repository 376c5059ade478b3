"""Train the fine network on the store's organ-region crops.

sh fine_seg/run.sh --nproc 2 --config fine_seg/config.yaml [key=value ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from segcore.store import FINE_IMAGE, FINE_LABEL
from segcore.training.cli import main
from segcore.training.engine import Stage

STAGE = Stage(name="fine", image_key=FINE_IMAGE, label_key=FINE_LABEL)

if __name__ == "__main__":
    sys.exit(main(STAGE, Path(__file__).with_name("config.yaml")))
