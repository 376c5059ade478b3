"""The zip unpacker on its own: every archive either unpacks into a folder whose series reads on
its grid (or is refused by the reader), or is refused with a 4xx naming the upload; nothing else."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import pytest
from fastapi import HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference_server.uploads import ZipLimits, check_archive, extract_series, safe_member_name
from segcore.volumes import VolumeError, read_volume
from testkit import REAL_DATA

LIMITS = ZipLimits(max_members=40, max_unpacked_bytes=8 << 20, max_ratio=50.0)
SERIES = sorted((REAL_DATA / "abdomen_ct_dicom").iterdir()) if REAL_DATA.is_dir() else []


def zip_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    """A deflated zip of ``(name, content, flag_bits)`` members; the flag bits are set in the
    local headers and the central directory afterwards (``zipfile`` writes its own)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, content, _ in members:
            bundle.writestr(name, content)
    data = buffer.getvalue()
    for index, (_, _, flags) in enumerate(members):
        data = patch_member(data, index, 8, 6, lambda old, flags=flags: old | flags, width=2)
    return data


def patch_member(data: bytes, member: int, central: int, local: int, change, width: int = 4) -> bytes:
    """The zip with one field of member ``member`` changed (``change(old) -> new``) at byte
    ``central`` of its central-directory entry and ``local`` of its local header."""
    buffer = bytearray(data)
    entry = -1
    for _ in range(member + 1):
        entry = buffer.index(b"PK\x01\x02", entry + 1)
    header = int.from_bytes(buffer[entry + 42 : entry + 46], "little")
    for field in (entry + central, header + local):
        old = int.from_bytes(buffer[field : field + width], "little")
        buffer[field : field + width] = change(old).to_bytes(width, "little")
    return bytes(buffer)


def unpack(tmp_path: Path, data: bytes) -> Path:
    archive = tmp_path / "upload.zip"
    archive.write_bytes(data)
    check_archive(archive, LIMITS, "upload.zip")
    return extract_series(archive, tmp_path / "series", LIMITS, "upload.zip")


def test_a_member_name_longer_than_the_file_system_allows_is_unpacked_under_a_short_name(tmp_path, real_data):
    # A 300-character name used to reach the file system whole (its limit is 255 bytes): a 500.
    slices = sorted((real_data / "abdomen_ct_dicom").iterdir())
    members = [(("d" * 290) + f"{i:04d}.dcm", path.read_bytes(), 0) for i, path in enumerate(slices)]
    folder = unpack(tmp_path, zip_bytes(members))
    assert max(len(path.name) for path in folder.iterdir()) <= 80
    array, _ = read_volume(folder)
    assert array.shape[0] == len(slices)


def test_an_encrypted_member_is_refused_from_the_directory(tmp_path):
    archive = tmp_path / "upload.zip"
    archive.write_bytes(zip_bytes([("a.dcm", b"x" * 1000, 0), ("secret.dcm", b"y" * 1000, 0x1)]))
    with pytest.raises(HTTPException) as refusal:
        check_archive(archive, LIMITS, "upload.zip")
    assert refusal.value.status_code == 422
    assert "secret.dcm" in refusal.value.detail and "encrypted" in refusal.value.detail


@pytest.mark.parametrize(
    ("name", "safe"),
    [("../../etc/passwd", "000003_passwd"), ("a\\b\\c.dcm", "000003_c.dcm"), ("腹部 1.dcm", "000003____1.dcm"),
     ("..", "000003_.."), ("x" * 300, "000003_" + "x" * 64)],
)  # fmt: skip
def test_member_names_on_disk_are_short_ascii_and_flat(name, safe):
    assert safe_member_name(3, name) == safe


names = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=400).filter(
        lambda name: name.split("\0")[0]  # zipfile cuts a name at NUL, and cannot write an empty one
    ),
    st.sampled_from(["a.dcm", "a.dcm", "dir/", "../x", "/abs", "c:\\x", "."]),
)
contents = st.one_of(
    st.integers(0, max(len(SERIES) - 1, 0)).map(lambda i: ("slice", i)),
    st.binary(max_size=2000).map(lambda b: ("bytes", b)),
    st.integers(0, 1 << 20).map(lambda n: ("zeros", n)),
)


@st.composite
def archives(draw):
    members = draw(st.lists(st.tuples(names, contents, st.sampled_from([0, 0, 0, 0x1, 0x8, 0x40])), max_size=24))
    built = []
    for name, (kind, value), flags in members:
        content = SERIES[value].read_bytes() if kind == "slice" else value if kind == "bytes" else b"\0" * value
        built.append((name, content, flags))
    data = zip_bytes(built)
    if built and draw(st.booleans()):
        size = draw(st.integers(0, 1 << 24))  # the uncompressed size the headers declare
        data = patch_member(data, draw(st.integers(0, len(built) - 1)), 24, 22, lambda _: size)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + bytes([draw(st.integers(0, 255))]) + data[cut + 1 :]
    return data


@pytest.mark.filterwarnings("ignore:Duplicate name", "ignore:Generating overly large repr")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(archives())
def test_any_archive_is_unpacked_and_read_or_refused_with_a_4xx(real_data, data):
    with tempfile.TemporaryDirectory() as folder:
        try:
            series = unpack(Path(folder), data)
        except HTTPException as refusal:
            assert 400 <= refusal.status_code < 500 and "upload.zip" in refusal.detail
            return
        assert all(path.parent == series for path in series.rglob("*"))  # flat: nothing outside the folder
        try:
            array, geometry = read_volume(series)
        except VolumeError:
            return
        assert array.shape == tuple(reversed(geometry.size))


def rle_series(slices: int, frames: int = 1, size: int = 512) -> bytes:
    """A stored zip of ``slices`` RLE-compressed images of air (``frames`` frames each, ``size`` ×
    ``size``) on the shared series' headers: a few KB per image that decode to 512 KB each."""
    import numpy as np
    import pydicom
    from pydicom.uid import RLELossless

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for index in range(slices):
            dataset = pydicom.dcmread(SERIES[index])
            pixels = np.full((frames, size, size) if frames > 1 else (size, size), 24, np.uint16)  # -1000 HU
            dataset.Rows = dataset.Columns = size
            if frames > 1:
                dataset.NumberOfFrames = frames
            dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            dataset.compress(RLELossless, pixels)
            stream = io.BytesIO()
            dataset.save_as(stream, enforce_file_format=True)
            bundle.writestr(f"series/{index:03d}.dcm", stream.getvalue())
        bundle.writestr("series/README.txt", b"not an image")
    return buffer.getvalue()


def test_the_voxels_of_a_compressed_series_come_from_its_headers(tmp_path):
    # The unpacked bytes / 2 said 4 % of the voxels of an RLE series: admitted 25x under its need.
    archive = tmp_path / "rle.zip"
    archive.write_bytes(rle_series(8))
    size = check_archive(archive, LIMITS, "rle.zip")
    assert size.image_voxels == 8 * 512 * 512 and size.unpacked_bytes < 8 * 512 * 512 / 10
    archive.write_bytes(rle_series(2, frames=3, size=64))
    assert check_archive(archive, LIMITS, "rle.zip").image_voxels == 2 * 3 * 64 * 64
