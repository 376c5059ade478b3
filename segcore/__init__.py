"""segcore: the shared library of the coarse-to-fine abdominal CT segmentation pipeline."""

__version__ = "0.1.0"
