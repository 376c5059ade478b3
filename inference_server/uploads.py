"""What an upload is, and unpacking a zipped DICOM series within hard bounds.

A zip is checked at three points, each before it can cost more than a bounded amount:

1. the end-of-central-directory record: member count and directory size, before ``zipfile``
   parses the directory (a directory of millions of entries would cost gigabytes of objects);
2. the central directory: compression method (stored or deflate only: Python's bzip2 and lzma
   readers inflate a whole block at once, so one small read can cost gigabytes of memory),
   declared sizes against the unpacked-size cap and the compression-ratio limit;
3. while streaming each member: bytes are counted as they are produced, per member and in
   total, against the member's declared size, the ratio limit and the cap (headers can lie).

Every refusal is an :class:`fastapi.HTTPException` (413 for sizes, 422 for the rest, 400 for
a zip that cannot be read) whose detail names the upload.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from fastapi import HTTPException

from inference_server.series_headers import member_voxels

ACCEPTED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", **ACCEPTED_METHODS}
RATIO_ALLOWANCE_BYTES = 64 * 1024
"""Bytes a member (and the whole archive) may produce beyond the ratio limit: tiny members such as
an empty file or a short text compress far better than any scan, and cost nothing."""
DIRECTORY_BYTES_PER_MEMBER = 512
"""Central-directory bytes allowed per member (46 fixed + name + extra fields)."""
CHUNK_BYTES = 1 << 20
ENCRYPTED_FLAG = 0x1
"""General-purpose flag bit 0 of a member: encrypted (``zipfile`` cannot read it without a password)."""
SAFE_NAME_CHARACTERS = 64
UNREADABLE_ARCHIVE = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, UnicodeDecodeError)
"""What ``zipfile`` raises on an archive it cannot parse (a name not in UTF-8 is one): a 400."""


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on one zipped DICOM series."""

    max_members: int
    max_unpacked_bytes: int
    max_ratio: float


def sniff_kind(name: str, head: bytes) -> Literal["nii.gz", "nii", "zip"]:
    """What an upload is, from its name or, failing that, its first bytes."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return "nii.gz"
    if lower.endswith(".nii"):
        return "nii"
    if lower.endswith(".zip"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "nii.gz"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):
        return "nii"
    raise HTTPException(400, f"{name}: not a NIfTI (.nii, .nii.gz) file nor a .zip of one DICOM series")


def extract_series(archive: Path, folder: Path, limits: ZipLimits, name: str) -> Path:
    """Unpack a zip's files (flattened, names made safe) into ``folder``, within ``limits``."""
    folder.mkdir(mode=0o700)
    try:
        with _checked_archive(archive, limits, name) as (bundle, members):
            budget = _Budget(limits, archive.stat().st_size, name)
            for index, member in enumerate(members):
                _extract_member(bundle, member, folder / safe_member_name(index, member.filename), budget)
    except UNREADABLE_ARCHIVE as error:
        raise HTTPException(400, f"{name}: not a readable zip archive ({error})") from None
    return folder


def safe_member_name(index: int, filename: str) -> str:
    """A member's file name on disk: its index, then at most :data:`SAFE_NAME_CHARACTERS` ASCII
    letters, digits, ``.``, ``_`` or ``-`` of its last path part (no folders, no name too long for
    the file system, whatever the archive says)."""
    last = PurePosixPath(filename.replace("\\", "/")).name
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in last)
    return f"{index:06d}_{kept[:SAFE_NAME_CHARACTERS]}"


def _extract_member(bundle: zipfile.ZipFile, member: zipfile.ZipInfo, target_path: Path, budget: _Budget) -> None:
    """Copy one member to ``target_path``, a chunk at a time; an archive's fault is a 4xx naming
    the member (a write error, the server's fault, is not caught)."""
    with _unpacking(member, budget.name):
        source = bundle.open(member)
    with source, target_path.open("wb") as target:
        produced = 0
        while True:
            with _unpacking(member, budget.name):
                chunk = source.read(CHUNK_BYTES)
            if not chunk:
                break
            produced += len(chunk)
            budget.spend(member, produced, len(chunk))
            target.write(chunk)


@contextmanager
def _unpacking(member: zipfile.ZipInfo, name: str) -> Iterator[None]:
    """``zipfile``'s own errors while opening or reading a member (encrypted, a local header
    pointing outside the file, ...) as a 422 naming it."""
    try:
        yield
    except UNREADABLE_ARCHIVE:
        raise
    except (OSError, RuntimeError, ValueError) as error:
        raise HTTPException(422, f"{name}: member {member.filename[:100]!r} cannot be unpacked ({error})") from None


@dataclass(frozen=True)
class ArchiveSize:
    """What a zipped series declares: its unpacked bytes (directory) and its images' voxels (headers)."""

    unpacked_bytes: int
    image_voxels: int


def check_archive(archive: Path, limits: ZipLimits, name: str) -> ArchiveSize:
    """Every check that needs only the zip's directories and its members' DICOM headers (no pixel
    data is decompressed; :mod:`inference_server.series_headers`): a server runs it before
    queueing the work; :func:`extract_series` checks the directories again."""
    try:
        with _checked_archive(archive, limits, name) as (bundle, members):
            voxels = 0
            for member in members:
                with _unpacking(member, name):
                    voxels += member_voxels(bundle, member, name)
            return ArchiveSize(sum(member.file_size for member in members), voxels)
    except UNREADABLE_ARCHIVE as error:
        raise HTTPException(400, f"{name}: not a readable zip archive ({error})") from None


@contextmanager
def _checked_archive(archive: Path, limits: ZipLimits, name: str) -> Iterator[tuple[zipfile.ZipFile, list]]:
    """The open archive and its file members, once the end record and the directory passed."""
    _check_directory_record(archive, limits, name)
    with zipfile.ZipFile(archive) as bundle:
        # not ZipInfo.is_dir(): it raises IndexError on an empty name
        members = [member for member in bundle.infolist() if not member.filename.endswith("/")]
        _check_members(members, limits, name)
        yield bundle, members


def _check_directory_record(archive: Path, limits: ZipLimits, name: str) -> None:
    """Member count and central-directory size from the end record, before the directory is parsed."""
    with archive.open("rb") as stream:
        record = zipfile._EndRecData(stream)  # the standard library's own end-record reader (zip64 too)
    if record is None:
        raise HTTPException(400, f"{name}: not a readable zip archive (no end of central directory)")
    members, directory_bytes = record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE]
    if members > limits.max_members or directory_bytes > limits.max_members * DIRECTORY_BYTES_PER_MEMBER:
        raise HTTPException(422, f"{name}: {members:,} members; at most {limits.max_members:,} are accepted")


def _check_members(members: list[zipfile.ZipInfo], limits: ZipLimits, name: str) -> None:
    """Methods, counts and declared sizes, from the parsed central directory."""
    if not members:
        raise HTTPException(422, f"{name}: the zip holds no files")
    if len(members) > limits.max_members:
        raise HTTPException(422, f"{name}: {len(members):,} members; at most {limits.max_members:,} are accepted")
    for member in members:
        if member.flag_bits & ENCRYPTED_FLAG:
            raise HTTPException(
                422, f"{name}: member {member.filename[:100]!r} is encrypted; send the series unencrypted"
            )
        if member.compress_type not in ACCEPTED_METHODS:
            method = METHOD_NAMES.get(member.compress_type, f"method {member.compress_type}")
            raise HTTPException(
                422, f"{name}: member {member.filename[:100]!r} is compressed with {method}; only stored or "
                "deflate members are accepted",
            )  # fmt: skip
        if member.file_size > limits.max_ratio * member.compress_size + RATIO_ALLOWANCE_BYTES:
            raise _ratio_refusal(name, member.file_size, member.compress_size, limits)
    declared = sum(member.file_size for member in members)
    if declared > limits.max_unpacked_bytes:
        raise _unpacked_refusal(name, limits)


class _Budget:
    """Bytes produced so far, per member and in total, against what the archive may produce."""

    def __init__(self, limits: ZipLimits, archive_bytes: int, name: str):
        self.limits, self.name, self.total = limits, name, 0
        self.total_allowed = limits.max_ratio * archive_bytes + RATIO_ALLOWANCE_BYTES

    def spend(self, member: zipfile.ZipInfo, produced: int, more: int) -> None:
        self.total += more
        if produced > member.file_size:
            declared = f"the {member.file_size:,} bytes its header declares"
            raise HTTPException(422, f"{self.name}: member {member.filename[:100]!r} holds more than {declared}")
        if produced > self.limits.max_ratio * member.compress_size + RATIO_ALLOWANCE_BYTES:
            raise _ratio_refusal(self.name, produced, member.compress_size, self.limits)
        if self.total > self.total_allowed:
            raise _ratio_refusal(self.name, self.total, self.total_allowed / self.limits.max_ratio, self.limits)
        if self.total > self.limits.max_unpacked_bytes:
            raise _unpacked_refusal(self.name, self.limits)


def _ratio_refusal(name: str, unpacked: float, packed: float, limits: ZipLimits) -> HTTPException:
    ratio = unpacked / max(packed, 1)
    return HTTPException(
        413, f"{name}: compression ratio over {ratio:.0f}:1 (limit {limits.max_ratio:g}:1); not a DICOM series"
    )


def _unpacked_refusal(name: str, limits: ZipLimits) -> HTTPException:
    return HTTPException(413, f"{name}: unpacked size over the limit of {limits.max_unpacked_bytes / 2**20:.0f} MB")
