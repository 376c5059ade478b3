"""What in an input folder is plainly not a CT: passed over with one line each, not failed.

Users leave other files beside their scans: the label maps of a FLARE download
(``<id>.nii.gz`` masks next to ``<id>_0000.nii.gz`` images), a ``*_labels.nii.gz``, a 4-D image,
an MR series from the same study. :func:`not_a_ct` tells them apart from the header and a cheap
look, never by reading a file whole (a scan may be gigabytes):

* a NIfTI with a fourth axis longer than 1 (time, channels): a 4-D image;
* a NIfTI whose intent is a label map, or whose stored type is an integer, unscaled, and whose
  first :data:`SAMPLE_BYTES` of voxels hold at most :data:`LABEL_MAP_VALUES` distinct values, none
  negative: a label map. A CT in HU holds air (about -1000) and noise, so hundreds of values and
  negative ones, in any slab; one stored unsigned with a rescale is scaled, so not taken for one;
* a DICOM folder whose first file's Modality is set and is neither CT nor OT (secondary capture,
  which some exports use for CT): an MR, PET, SEG, RTSTRUCT... series.

Anything this cannot tell (an unreadable header, a truncated file) is left to the reader, which
fails the case naming the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_BYTES = 8 * 1024 * 1024
"""How much of a NIfTI's voxels (from the start of the payload) the label-map look reads."""
LABEL_MAP_VALUES = 256
"""A label map has at most this many distinct values (any label set fits a byte)."""
CT_MODALITIES = ("CT", "OT")
NIFTI_INTENT_LABEL = 1002
DICOM_FILES_LOOKED_AT = 16
"""How many files of a folder are tried for a DICOM header before it is left to the reader."""


def not_a_ct(path: Path) -> str | None:
    """Why ``path`` (a NIfTI file or a DICOM folder) is plainly not a CT, or None when it may be one."""
    try:
        return _dicom_reason(path) if path.is_dir() else _nifti_reason(path)
    except Exception:  # anything unreadable is the reader's to report, naming the reason
        return None


def _nifti_reason(path: Path) -> str | None:
    import nibabel as nib

    image = nib.load(path)
    shape = tuple(int(size) for size in image.shape)
    if len(shape) > 3 and any(size > 1 for size in shape[3:]):
        return f"a {len(shape)}-D image ({'×'.join(map(str, shape))}), not a 3-D CT"
    if len(shape) < 3:
        return None
    if int(image.header.get("intent_code", 0)) == NIFTI_INTENT_LABEL:
        return "a label map (NIfTI intent: label), not a CT"
    dtype = image.get_data_dtype()
    scaled = not (float(image.dataobj.slope) == 1.0 and float(image.dataobj.inter) == 0.0)
    if not np.issubdtype(dtype, np.integer) or scaled:
        return None
    slices = max(1, min(shape[2], SAMPLE_BYTES // max(1, shape[0] * shape[1] * dtype.itemsize)))
    sample = np.asarray(image.dataobj[:, :, :slices])  # the first slices only: nibabel reads just their bytes
    values = np.unique(sample)
    if len(values) <= LABEL_MAP_VALUES and values[0] >= 0:
        shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        return f"a label map ({dtype} with {len(values)} distinct values: {shown}), not a CT"
    return None


def _dicom_reason(folder: Path) -> str | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    for path in files[:DICOM_FILES_LOOKED_AT]:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        modality = str(header.get("Modality", "")).strip().upper()
        if modality and modality not in CT_MODALITIES:
            return f"a DICOM series of Modality {modality}, not CT"
        return None
    return None
