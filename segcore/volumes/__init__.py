"""Volumes: reading CT and label files with their exact grid, the input checks, writing masks,
grids and resampling, CT intensity, and the body region.

The readers' public names are here; the modules hold one concern each: :mod:`.names` (case
file names), :mod:`.checks` (errors, limits, shape / CT / grid checks), :mod:`.nifti` (NIfTI
header checks and payload), :mod:`.dicom` (DICOM series), :mod:`.read` (CTs and label maps),
:mod:`.write` (NIfTI writing), :mod:`.itk` (SimpleITK images), :mod:`.geometry` (grids and
orientation), :mod:`.resample`, :mod:`.intensity`, :mod:`.body_region`.
"""

from segcore.volumes.checks import (
    CT_AIR_OR_FAT_HU,
    DEFAULT_LIMITS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_VOXELS,
    UNLIMITED,
    ErrorKind,
    ImageInfo,
    Limits,
    VolumeError,
    check_ct_values,
    check_path_names,
    check_shape,
    grid_difference,
    hu_scale_warning,
)
from segcore.volumes.dicom import dicom_series_files
from segcore.volumes.itk import geometry_of, to_image
from segcore.volumes.names import CHANNEL_SUFFIX, NIFTI_SUFFIXES, case_id, case_stem, is_nifti, is_utf8, printable
from segcore.volumes.nifti import check_file_header
from segcore.volumes.read import read_image, read_label_map, read_labels_on_grid, read_volume
from segcore.volumes.write import nifti_bytes_for_viewing, write_volume

__all__ = [
    "CHANNEL_SUFFIX",
    "CT_AIR_OR_FAT_HU",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_VOXELS",
    "NIFTI_SUFFIXES",
    "UNLIMITED",
    "ErrorKind",
    "ImageInfo",
    "Limits",
    "VolumeError",
    "case_id",
    "case_stem",
    "check_ct_values",
    "check_file_header",
    "check_path_names",
    "check_shape",
    "dicom_series_files",
    "geometry_of",
    "grid_difference",
    "hu_scale_warning",
    "is_nifti",
    "is_utf8",
    "printable",
    "read_label_map",
    "read_labels_on_grid",
    "read_image",
    "read_volume",
    "to_image",
    "nifti_bytes_for_viewing",
    "write_volume",
]
