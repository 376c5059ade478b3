"""The cases of an input and the output folder's checks: what ``predict.sh`` segments and where
each case's claim lies.

The input is one NIfTI file, one DICOM series folder (a folder holding DICOM files), or a folder
of them: every ``.nii``/``.nii.gz`` file and every sub-folder is then a case, but for what is
plainly not a CT (a label map, a 4-D image, an MR series: :mod:`predict.screen`), hidden entries,
other files and the output folder, which are passed over, each with the reason.

A name that is not UTF-8 (a Latin-1 ``café_0000.nii.gz`` on a Linux file system) is shown, and
becomes its case's id, with the odd bytes as ``\\xe9`` (``caf\\xe9``): the reader refuses the file
itself (SimpleITK cannot open it), and the record, lock and table stay writable text.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from predict.screen import not_a_ct
from segcore.volumes import case_id, is_nifti, is_utf8, printable

DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class Case:
    """One input: a NIfTI file or a DICOM folder, and the name of its mask."""

    name: str
    path: Path
    output_name: str

    @property
    def case_id(self) -> str:
        return self.output_name.removesuffix(".nii.gz")


def output_name(path: Path) -> str:
    """``<id>_0000.nii.gz`` -> ``<id>.nii.gz``; other files and folders keep their stem, plus ``.nii.gz``."""
    return f"{printable(case_id(path))}.nii.gz"


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file: ``DICM`` after the 128-byte preamble, or a ``.dcm`` name."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as stream:
            stream.seek(DICOM_MAGIC_OFFSET)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def is_series_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a DICOM series itself (DICOM files and no NIfTI directly in it)."""
    files = [path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")]
    return not any(is_nifti(path) for path in files) and any(is_dicom_file(path) for path in files)


def input_problem(path: Path) -> str | None:
    """Why ``-i path`` cannot be read as cases (one line), or None."""
    if not path.exists():
        return "does not exist"
    if not is_utf8(path.absolute() if path.is_dir() else path.absolute().parent):
        return "has a folder name that is not valid UTF-8 (SimpleITK cannot open files there): rename it"
    if path.is_file() and not is_nifti(path):
        if is_dicom_file(path):
            return "is one DICOM file: give the folder of its series"
        return "is neither a NIfTI file (.nii, .nii.gz) nor a folder"
    return None


def find_cases(input_path: Path, output_dir: Path | None = None) -> tuple[list[Case], dict[str, str], dict[str, str]]:
    """The cases of ``input_path`` (see the module docstring), sorted by name.

    Returns:
        ``(cases, problems, passed_over)``: the cases; ``{name: reason}`` for inputs that cannot be
        written (two inputs mapping to one output name); ``{name: reason}`` for entries passed over.
    """
    if input_path.is_file() or is_series_folder(input_path):  # one case, as the user named it
        return [Case(printable(input_path.name), input_path, output_name(input_path))], {}, {}
    cases, passed_over = [], {}
    excluded = output_dir.resolve() if output_dir is not None else None
    for path in sorted(input_path.iterdir()):
        if path.name.startswith(".") or (path.is_dir() and path.resolve() == excluded):
            continue
        if not (path.is_dir() or (path.is_file() and is_nifti(path))):
            passed_over[printable(path.name)] = "neither NIfTI nor a folder"
        elif (reason := not_a_ct(path)) is not None:
            passed_over[printable(path.name)] = reason
        else:
            cases.append(Case(printable(path.name), path, output_name(path)))
    claimed: dict[str, list[Case]] = {}
    for case in cases:
        claimed.setdefault(case.output_name, []).append(case)
    problems = {}
    for name, owners in claimed.items():
        if len(owners) > 1:
            for case in owners:
                others = ", ".join(other.name for other in owners if other is not case)
                problems[case.name] = f"{printable(case.path)}: output name {name} is also claimed by {others}"
    return [case for case in cases if case.name not in problems], problems, passed_over


def check_output_folder(folder: Path) -> str | None:
    """Create ``folder`` if missing and try a new file in it; ``None`` when usable, else the reason.

    Writing a probe file is the only sure test: ``os.access`` and the permission bits say yes to
    root on a read-only folder, and a read-only file system is found out only by writing. A path
    that is not UTF-8 is refused: SimpleITK, which writes the masks, aborts on it.
    """
    if not is_utf8(folder.absolute()):
        return "the path is not valid UTF-8 (SimpleITK cannot write there): rename it"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return "exists and is not a folder"
    except NotADirectoryError:
        return "cannot be created: a part of its path is a file"
    except OSError as error:
        return f"cannot be created: {error.strerror}"
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".predict-probe-", dir=folder)
    except OSError as error:
        return f"not writable: {error.strerror}"
    os.close(descriptor)
    os.unlink(probe)
    return None


def lock_path(output_dir: Path, case: Case) -> Path:
    """The case's claim file: hidden, so :func:`find_cases` never takes it for a case."""
    return output_dir / f".{case.case_id}.lock"
