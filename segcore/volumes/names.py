"""Case names in the FLARE22 / nnU-Net layout: ``<id>_0000.nii.gz`` images, ``<id>.nii.gz`` labels."""

from __future__ import annotations

import os
from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


CHANNEL_SUFFIX = "_0000"
"""FLARE / nnU-Net image names end with the channel index: ``<id>_0000.nii.gz``."""


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether a path names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def case_id(path: str | os.PathLike) -> str:
    """A FLARE / nnU-Net case id: the name without NIfTI suffix and without the trailing channel
    index :data:`CHANNEL_SUFFIX` (``FLARE22_Tr_0001_0000.nii.gz`` -> ``FLARE22_Tr_0001``); other
    names keep their stem."""
    return case_stem(path).removesuffix(CHANNEL_SUFFIX)


def printable(path: str | os.PathLike) -> str:
    """``path`` as text that any terminal, CSV or JSON file takes: a byte of its name that is not
    UTF-8 (a Latin-1 ``é`` on a Linux file system, which Python keeps as a surrogate escape) is
    shown as ``\\xe9``. Names that are UTF-8 come back unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: str | os.PathLike) -> bool:
    """Whether every byte of ``path`` is UTF-8: SimpleITK aborts the process on any other path."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def case_stem(path: str | os.PathLike) -> str:
    """File or folder name without its NIfTI suffix (``abc_0000.nii.gz`` -> ``abc_0000``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
