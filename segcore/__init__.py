"""segcore: the shared library of the coarse-to-fine abdominal CT segmentation pipeline.

``segcore.segment(...)`` segments one CT (:mod:`segcore.api`); it is imported on first use, so
``import segcore`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Segmentation", "segment"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from segcore import api

        return getattr(api, name)
    raise AttributeError(f"module 'segcore' has no attribute {name!r}")
