"""The voxels a zipped DICOM series will decode to, from its members' headers alone.

A series' unpacked bytes say little about its voxels: RLE or JPEG pixel data decode to many
times their size (an RLE series of 157 M voxels unpacks to 6.6 MB). Each image's header says
exactly: ``Rows`` × ``Columns`` × ``NumberOfFrames`` (1 when absent). Only the start of each
member is decompressed: :data:`FIRST_READ_BYTES`, then twice as much until the header's group
0028 has been read, up to :data:`MAX_HEADER_BYTES` (the reader stops before the pixel data).
A member that is no DICOM file (a ``README``), or a DICOM file without image rows and columns
(a ``DICOMDIR``), counts 0 voxels; a DICOM file whose header is not over within
:data:`MAX_HEADER_BYTES` is refused (422), since what it holds cannot be known cheaply.
"""

from __future__ import annotations

import io
import zipfile

import pydicom
from fastapi import HTTPException
from pydicom.errors import InvalidDicomError

FIRST_READ_BYTES = 16 * 1024
MAX_HEADER_BYTES = 1 << 20
PIXEL_GROUP = 0x0028
"""Rows, Columns and NumberOfFrames are in group 0028; a header read past it holds them if it has them."""


def member_voxels(bundle: zipfile.ZipFile, member: zipfile.ZipInfo, name: str) -> int:
    """``Rows × Columns × NumberOfFrames`` of one member (0: not an image); reads only its header."""
    wanted = FIRST_READ_BYTES
    with bundle.open(member) as stream:
        start = stream.read(wanted)
        while True:
            complete = len(start) < wanted  # the whole member is in
            try:  # a header cut short by the read gives the elements before the cut
                header = pydicom.dcmread(io.BytesIO(start), stop_before_pixels=True, defer_size=256)
            except InvalidDicomError:
                return 0
            except Exception:  # noqa: BLE001 — pydicom's errors on a header cut mid-element vary
                header = pydicom.Dataset()
            if "Rows" in header and "Columns" in header:
                frames = header.get("NumberOfFrames", 1)
                return int(header.Rows) * int(header.Columns) * max(int(frames or 1), 1)
            if complete or any(element.tag.group > PIXEL_GROUP for element in header):
                return 0
            if wanted >= MAX_HEADER_BYTES:
                raise HTTPException(
                    422, f"{name}: member {member.filename[:100]!r} has a DICOM header over "
                    f"{MAX_HEADER_BYTES >> 20} MiB before its image size",
                )  # fmt: skip
            start += stream.read(wanted)
            wanted *= 2
