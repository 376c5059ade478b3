"""Writing label maps and volumes as NIfTI carrying exactly their geometry, atomically."""

from __future__ import annotations

import errno
import gzip
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.runtime.files import replace_atomically
from segcore.volumes.geometry import Geometry
from segcore.volumes.itk import to_image
from segcore.volumes.names import is_nifti, printable

NIFTI1_HEADER_BYTES = 348
"""``sizeof_hdr`` of NIfTI-1, the format ITK writes; ``vox_offset`` is a float32 at byte 108."""


def write_volume(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, *, compress: bool = True) -> None:
    """Write a ``(z, y, x)`` array as NIfTI carrying exactly ``geometry``, atomically.

    The file is written next to its destination under a temporary name and renamed, so a
    reader never sees a half-written file.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: expected a .nii or .nii.gz destination")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = to_image(array, geometry)
    suffix = ".nii.gz" if str(path).lower().endswith(".nii.gz") else ".nii"  # ITK picks the format by name
    payload = array.size * array.dtype.itemsize

    def write(temporary: Path) -> None:
        sitk.WriteImage(image, str(temporary), useCompression=compress)
        _check_whole(temporary, payload, path)

    replace_atomically(path, write, suffix)


def _check_whole(written: Path, payload: int, destination: Path) -> None:
    """Raise ``OSError`` when ITK left a short file: its NIfTI writer reports a failed write (a full
    disk) on stderr only and returns, so the file's length is checked: a ``.nii`` against its header
    and voxels, a ``.nii.gz`` by its gzip trailer (ISIZE: the decompressed length mod 2^32)."""
    size = written.stat().st_size
    try:
        opener = gzip.open if str(written).lower().endswith(".gz") else open
        with opener(written, "rb") as stream:
            header = stream.read(NIFTI1_HEADER_BYTES)
        order = "<" if int.from_bytes(header[:4], "little") == NIFTI1_HEADER_BYTES else ">"
        expected = int(np.frombuffer(header, f"{order}f4", count=1, offset=108)[0]) + payload
    except (OSError, EOFError, ValueError):
        expected = None
    if expected is not None and str(written).lower().endswith(".gz"):
        with written.open("rb") as stream:
            stream.seek(max(size - 4, 0))
            whole = size > 4 and int.from_bytes(stream.read(4), "little") == expected % 2**32
    else:
        whole = expected is not None and size >= expected
    if not whole:
        full = _free_bytes(written.parent) == 0
        code = errno.ENOSPC if full else errno.EIO
        reason = os.strerror(code) if full else f"{os.strerror(code)}: the NIfTI writer left a short file"
        raise OSError(code, reason, printable(destination))


def _free_bytes(folder: Path) -> int | None:
    try:
        status = os.statvfs(folder)
    except OSError:
        return None
    return status.f_bavail * status.f_frsize


def nifti_bytes_for_viewing(array: np.ndarray, geometry: Geometry) -> bytes:
    """A CT as the bytes of a ``.nii.gz`` file carrying ``geometry``, for a viewer (the web pages).

    Whole-number intensities (HU) are stored as int16 (clipped to its range), others as float32,
    with the fastest gzip level: the copy is made per request, read once and thrown away.
    """
    info = np.iinfo(np.int16)
    if array.dtype == np.int16:
        stored = array  # as read from most CTs: no copy besides the one ITK writes from
    elif np.issubdtype(array.dtype, np.integer) or bool(np.array_equal(array, np.round(array))):
        stored = np.clip(array, info.min, info.max).astype(np.int16, copy=False)
    else:
        stored = array.astype(np.float32, copy=False)
    image = to_image(stored, geometry)
    with tempfile.TemporaryDirectory(prefix="viewing-") as folder:
        path = Path(folder) / "ct.nii.gz"
        sitk.WriteImage(image, str(path), True, 1)
        return path.read_bytes()
