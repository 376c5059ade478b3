"""Generated NIfTI headers through the reader: it returns a volume that nibabel reads the same
way (same voxels, same placement in space), or refuses it with a :class:`VolumeError`; nothing else."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segcore.volumes import VolumeError, read_volume

DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.complex64]
ODD_FLOATS = [0.0, -1.0, -3.0, 1e-30, 1e30, float("nan"), float("inf"), float("-inf")]
PLACEMENT_FIELDS = ["pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
                    "srow_x", "srow_y", "srow_z"]  # fmt: skip
side = st.integers(2, 5)
shapes = st.one_of(
    st.tuples(side, side, side),
    st.tuples(side, side, side, st.integers(1, 2)),
    st.tuples(st.integers(1, 3), st.integers(1, 3)),
    st.tuples(side, st.integers(1, 2), side),
)


@st.composite
def nifti_headers(draw):
    """A sane header (unit quaternion, spacing 0.2-6 mm, an sform equal to the qform or not), then
    half the time one field made odd: zero, negative, tiny, huge, NaN or Inf."""
    shape = draw(shapes)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    zooms = [draw(st.floats(0.2, 6.0)) for _ in range(3)]
    rotation = np.array([draw(st.floats(-1, 1)) for _ in range(4)]) + [1e-3, 0, 0, 0]
    affine = nib.quaternions.quat2mat(rotation / np.linalg.norm(rotation)) @ np.diag(zooms)
    qform = np.eye(4)
    qform[:3, :3], qform[:3, 3] = affine, [draw(st.floats(-300, 300)) for _ in range(3)]
    header.set_qform(qform, code=draw(st.integers(0, 4)))
    header["pixdim"][0] = draw(st.sampled_from([1.0, -1.0])) if not header["qform_code"] else header["pixdim"][0]
    sform = qform if draw(st.booleans()) else np.vstack([np.array([[draw(st.floats(-5, 5)) for _ in range(4)]
                                                                  for _ in range(3)]), [0, 0, 0, 1]])  # fmt: skip
    header.set_sform(sform, code=draw(st.integers(0, 4)))
    if draw(st.booleans()):
        field = draw(st.sampled_from(PLACEMENT_FIELDS))
        values = header[field].copy()
        index = draw(st.integers(1 if field == "pixdim" else 0, max(values.size - 1, 0)))
        values.flat[index] = draw(st.sampled_from(ODD_FLOATS))
        header[field] = values
    if draw(st.booleans()):  # where the voxels start: inside the header, right after it, or later
        header["vox_offset"] = draw(st.sampled_from([0, 16, 348, 351, 352, 368, 1024, 2**31]))
    return header, shape, dtype, draw(st.integers(0, 2**16))


def write_raw(path: Path, header: nib.Nifti1Header, shape, dtype: np.dtype, seed: int) -> np.ndarray:
    """The header byte for byte as drawn, then CT-like values in x-fastest (NIfTI) order from its
    ``vox_offset`` (or from byte 352 when that is inside the header, or too far to pad)."""
    values = np.random.default_rng(seed).integers(-1024, 1024, size=shape)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(values, info.min, info.max)
    data = values.astype(dtype)
    with gzip.open(path, "wb") as stream:
        offset = int(header["vox_offset"])
        stream.write(header.binaryblock + b"\0" * (max(352, offset if offset < 2**20 else 0) - 348))
        stream.write(data.tobytes(order="F"))
    return data


def ras_corners(affine: np.ndarray, size) -> np.ndarray:
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(3, -1).T
    return corners @ affine[:3, :3].T + affine[:3, 3]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nifti_headers())
def test_reader_agrees_with_nibabel_or_refuses(drawn):
    header, shape, dtype, seed = drawn
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.nii.gz"
        data = write_raw(path, header, shape, dtype, seed)
        try:
            array, geometry = read_volume(path)
        except VolumeError:
            return
        image = nib.load(path)
        expected = data.reshape(data.shape[:3])  # a trailing singleton 4th axis is a 3-D volume
        assert np.array_equal(array, expected.transpose(2, 1, 0))
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(geometry.direction).reshape(3, 3) * np.asarray(geometry.spacing)
        lps[:3, 3] = geometry.origin
        itk_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
        apart = np.linalg.norm(ras_corners(itk_ras, geometry.size) - ras_corners(image.affine, geometry.size), axis=1)
        assert apart.max() <= 0.05 * min(geometry.spacing), (apart.max(), geometry, image.affine)
        assert np.allclose(geometry.spacing, image.header.get_zooms()[:3], rtol=1e-4)
