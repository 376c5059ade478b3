"""NIfTI files: every header check before a voxel is decoded, and the fast payload read.

Everything that can be refused from the header (dimensions, voxel and byte counts, spacing,
``vox_offset``, qform/sform agreement between SimpleITK and nibabel) is refused before the
payload is touched, so a 2 KB file that claims 2 GB costs nothing. An unscaled file is then
decompressed once, with ISA-L, straight into the array.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from isal import igzip, isal_zlib

from segcore.volumes.checks import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_VOXELS,
    SPACING_RANGE_MM,
    ImageInfo,
    Limits,
    VolumeError,
    check_path_names,
    check_shape,
    check_size,
    first_itk_line,
    info_of,
)
from segcore.volumes.geometry import Geometry
from segcore.volumes.itk import geometry_of
from segcore.volumes.names import is_nifti

READ_CHUNK_BYTES = 8 * 1024 * 1024
"""Voxels are decompressed into the array this much at a time: gzip readers copy through a
temporary of the size asked for (a 157 MB CT read in one call took 308 MB)."""


NIFTI_PLACEMENT_FIELDS = (
    "pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z"
)  # fmt: skip
"""NIfTI header fields that place the grid in space; an Inf in ``srow_y`` hangs ITK's reader for good."""


PLACEMENT_TOLERANCE_VOXELS = 0.05
"""Largest disagreement, in voxels, between where ITK and nibabel put a corner of a NIfTI grid."""


NIFTI_MAX_EXTENSION_BYTES = 64 * 1024 * 1024
"""Largest gap between a single-file NIfTI's header and its voxels (header extensions)."""


DEFLATE_MAX_RATIO = 1032
"""Deflate expands its input at most about 1032-fold (258-byte matches coded in under 2 bits each):
a ``.gz`` file of ``n`` bytes holds at most ``1032 n`` bytes, however it was made."""


def is_unscaled(image: nib.Nifti1Image) -> bool:
    """Whether the stored values are the voxels (no ``scl_slope``/``scl_inter`` to apply)."""
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy.
    return float(image.dataobj.slope) == 1.0 and float(image.dataobj.inter) == 0.0


def read_voxels(path: Path, image: nib.Nifti1Image, size_xyz: tuple[int, ...]) -> np.ndarray:
    """The voxels of an unscaled NIfTI file as a ``(z, y, x)`` array (x varies fastest on disk, as in
    a C-ordered ``(z, y, x)`` array: no transpose), refusing truncation and NaN/Inf."""
    dtype = image.get_data_dtype()
    expected = int(np.prod(size_xyz, dtype=np.int64)) * dtype.itemsize
    if str(path).lower().endswith(".gz"):
        _check_gzip_holds(path, int(image.dataobj.offset) + expected)
    buffer = bytearray(expected)
    view, filled = memoryview(buffer), 0
    try:
        with _open_payload(path) as stream:
            stream.seek(int(image.dataobj.offset))
            while filled < expected and (count := stream.readinto(view[filled : filled + READ_CHUNK_BYTES])):
                filled += count
    except (EOFError, OSError, zlib.error, isal_zlib.error) as error:
        raise VolumeError(path, f"truncated or corrupt gzip stream ({error})", "unreadable") from None
    if filled < expected:
        raise VolumeError(path, f"truncated file: {filled:,} of {expected:,} bytes", "unreadable")
    array = np.frombuffer(buffer, dtype=dtype).reshape(tuple(reversed(size_xyz)))
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    if np.issubdtype(dtype, np.floating) and not np.isfinite(array).all():
        raise VolumeError(path, "non-finite values (NaN or Inf) in the image", "not_ct")
    return array


def _open_payload(path: Path):
    """The file's bytes, decompressed (ISA-L's gzip, several times faster than zlib) when ``.gz``."""
    return igzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def check_file_header(
    path: str | os.PathLike, *, max_voxels: int = DEFAULT_MAX_VOXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> ImageInfo:
    """Every check of :func:`read_volume` that needs only an image file's header (milliseconds,
    whatever the file claims): a server runs it before queueing the work. Returns what the
    header says (size, bytes per voxel)."""
    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "no such file", "unreadable")
    reader, _ = header_checked_reader(path, Limits(max_voxels, max_bytes))
    return info_of(reader)


def header_checked_reader(path: Path, limits: Limits) -> tuple[sitk.ImageFileReader, nib.Nifti1Image | None]:
    """A reader whose header passed every check (size, spacing, placement), and the NIfTI header if any."""
    check_path_names(path)
    if path.stat().st_size == 0:
        raise VolumeError(path, "empty file", "unreadable")
    nifti = None
    if is_nifti(path):
        raw = _raw_header(path)
        _check_payload_offset(path, raw)
        nifti = _nifti_header(path)
        _check_nifti_header(path, nifti, raw, limits)
        _check_file_holds_payload(path, nifti)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise VolumeError(path, f"unreadable or truncated image ({first_itk_line(error)})", "unreadable") from None
    check_shape(path, info_of(reader), limits)
    if nifti is not None:
        _check_nifti_placement(path, nifti, geometry_of(reader))
    return reader, nifti


def _nifti_header(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI image as nibabel opens it (header only; no voxel is read)."""
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for a bad header
        raise VolumeError(path, f"unreadable NIfTI header ({error})", "unreadable") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(path, f"not a NIfTI-1/2 file ({type(image).__name__})", "unreadable")
    return image


def _check_nifti_header(path: Path, image: nib.Nifti1Image, raw: nib.Nifti1Header, limits: Limits) -> None:
    """Size and spacing from the NIfTI header: voxels, bytes, and pixdim of the spatial axes."""
    shape = tuple(int(s) for s in image.shape)
    itemsize = image.get_data_dtype().itemsize
    check_size(path, "×".join(str(s) for s in shape), int(np.prod(shape, dtype=np.int64)), itemsize, limits)
    placement = np.concatenate([raw[field].ravel() for field in NIFTI_PLACEMENT_FIELDS]).astype(np.float64)
    if not np.isfinite(placement).all():
        bad = [field for field in NIFTI_PLACEMENT_FIELDS if not np.isfinite(raw[field]).all()]
        raise VolumeError(path, f"non-finite values in the header's {', '.join(bad)}", "geometry")
    pixdim = raw["pixdim"][1 : 1 + min(len(shape), 3)].astype(np.float64)
    low, high = SPACING_RANGE_MM
    if not (np.isfinite(pixdim).all() and (pixdim >= low).all() and (pixdim <= high).all()):
        shown = ", ".join(f"{value:g}" for value in pixdim)
        raise VolumeError(
            path, f"impossible voxel spacing in pixdim ({shown}); expected {low:g} to {high:g} mm", "geometry"
        )


def _file_bytes(image: nib.Nifti1Image) -> int:
    """The bytes a whole NIfTI file claims to hold (decompressed): header, extensions and voxels."""
    return int(image.dataobj.offset) + int(np.prod(image.shape, dtype=np.int64)) * image.get_data_dtype().itemsize


def _check_file_holds_payload(path: Path, image: nib.Nifti1Image) -> None:
    """Refuse a file too small for the voxels its header claims, from its size alone: a truncated
    8 KB file claiming 512×512×2048 voxels fails here, before 1 GiB is set aside for them. A
    ``.nii`` must hold every byte; a ``.nii.gz`` at least 1/:data:`DEFLATE_MAX_RATIO` of them
    (:func:`_check_gzip_holds` streams the rest of the check when needed)."""
    claimed, size = _file_bytes(image), path.stat().st_size
    compressed = str(path).lower().endswith(".gz")
    if size >= (-(-claimed // DEFLATE_MAX_RATIO) if compressed else claimed):
        return
    claim = f"the {claimed:,} bytes its header claims ({'×'.join(map(str, image.shape))} {image.get_data_dtype()})"
    if compressed:
        why = f"a {size:,}-byte gzip file cannot hold {claim}: deflate expands at most {DEFLATE_MAX_RATIO}-fold"
    else:
        why = f"{size:,} bytes of {claim}"
    raise VolumeError(path, f"truncated file: {why}", "unreadable")


def _check_gzip_holds(path: Path, claimed: int) -> None:
    """Refuse a ``.nii.gz`` that decompresses to fewer than ``claimed`` bytes, before the voxels'
    array is allocated. The gzip trailer's ISIZE (the length mod 2^32 of a single-member file, as
    every NIfTI writer makes) settles it without decompressing; otherwise (a multi-member file, a
    truncated one whose last bytes are no trailer) the stream is counted, a chunk at a time."""
    with open(path, "rb") as stream:
        stream.seek(-4, os.SEEK_END)
        if int.from_bytes(stream.read(4), "little") == claimed % 2**32:
            return
    counted = 0
    try:
        with _open_payload(path) as stream:
            while counted < claimed and (chunk := stream.read(READ_CHUNK_BYTES)):
                counted += len(chunk)
    except (EOFError, OSError, zlib.error, isal_zlib.error) as error:
        raise VolumeError(path, f"truncated or corrupt gzip stream ({error})", "unreadable") from None
    if counted < claimed:
        raise VolumeError(path, f"truncated file: {counted:,} of {claimed:,} bytes", "unreadable")


def _check_payload_offset(path: Path, raw: nib.Nifti1Header) -> None:
    """The voxels of a ``.nii`` file start after its header (352 bytes for NIfTI-1, 544 for
    NIfTI-2, plus extensions): a smaller ``vox_offset`` would read header bytes as voxels, and
    ITK and nibabel repair it differently (a shifted mask, placed differently in each viewer)."""
    offset, first = float(raw["vox_offset"]), type(raw).single_vox_offset
    if not (math.isfinite(offset) and first <= offset <= first + NIFTI_MAX_EXTENSION_BYTES):
        raise VolumeError(
            path,
            f"the header's vox_offset ({offset:g}) does not place the voxels after the header: expected "
            f"{first} to {first + NIFTI_MAX_EXTENSION_BYTES:,} bytes",
            "unreadable",
        )


def _raw_header(path: Path) -> nib.Nifti1Header | nib.Nifti2Header:
    """The header as stored: nibabel's loader silently turns a 0 pixdim into 1, negatives into
    their absolute value and a 0 ``vox_offset`` into 352."""
    # The standard library's gzip, which decodes only what it returns: ISA-L's reads ahead and
    # would fail a truncated file here, before the payload check can say it is truncated.
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read(nib.Nifti2Header.sizeof_hdr)
        sizeof_hdr = int.from_bytes(raw[:4], "little")
        kind = (
            nib.Nifti2Header
            if nib.Nifti2Header.sizeof_hdr in (sizeof_hdr, int.from_bytes(raw[:4], "big"))
            else nib.Nifti1Header
        )
        header = kind.from_fileobj(io.BytesIO(raw[: kind.sizeof_hdr]), check=False)
    except (EOFError, OSError, zlib.error, ValueError) as error:
        raise VolumeError(path, f"unreadable NIfTI header ({error})", "unreadable") from None
    return header


def _check_nifti_placement(path: Path, image: nib.Nifti1Image, geometry: Geometry) -> None:
    """Refuse a NIfTI file that ITK and nibabel would place differently.

    The mask is written with ITK's reading of the grid; a nibabel user must see it on the scan.
    They disagree when the sform and qform differ (ITK may pass over a sheared or scaled sform
    that nibabel takes) or when ITK repairs the header; the message names the forms and codes.
    """
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in geometry.size], indexing="ij")).reshape(3, -1).T
    itk_world = geometry.index_to_physical(corners) * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
    nib_world = nib.affines.apply_affine(image.affine, corners)
    apart = float(np.linalg.norm(itk_world - nib_world, axis=1).max())
    if apart > PLACEMENT_TOLERANCE_VOXELS * min(geometry.spacing):
        header = image.header
        codes = f"qform_code {int(header['qform_code'])}, sform_code {int(header['sform_code'])}"
        raise VolumeError(
            path,
            f"ambiguous orientation: the qform and sform ({codes}) place voxels up to {apart:.3g} mm apart "
            "as SimpleITK and nibabel read them; fix the header so that both agree",
            "geometry",
        )


def check_payload(path: Path, image: nib.Nifti1Image) -> None:
    """Refuse truncated or corrupt NIfTI files and float data with NaN/Inf, streaming the payload.

    ITK reads a truncated ``.nii.gz`` without complaint (the missing voxels come back as 0)
    and turns NaN/Inf into 0, so both are checked here on the raw bytes, a chunk at a time.
    """
    dtype = image.get_data_dtype()
    expected = int(np.prod(image.shape, dtype=np.int64)) * dtype.itemsize
    floating = np.issubdtype(dtype, np.floating)
    available, pending, finite = 0, b"", True
    try:
        with _open_payload(path) as stream:
            stream.seek(int(image.dataobj.offset))
            while (chunk := stream.read(1 << 24)) and available < expected:
                chunk = chunk[: expected - available]
                available += len(chunk)
                if floating and finite:
                    pending += chunk
                    whole = len(pending) - len(pending) % dtype.itemsize
                    finite = bool(np.isfinite(np.frombuffer(pending[:whole], dtype)).all())
                    pending = pending[whole:]
    except (EOFError, OSError, zlib.error, isal_zlib.error) as error:
        raise VolumeError(path, f"truncated or corrupt gzip stream ({error})", "unreadable") from None
    if available < expected:
        raise VolumeError(path, f"truncated file: {available:,} of {expected:,} bytes", "unreadable")
    if not finite:
        raise VolumeError(path, "non-finite values (NaN or Inf) in the image", "not_ct")
