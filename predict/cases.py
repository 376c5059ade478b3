"""The cases of an input folder and the output folder's checks: what ``predict.sh`` segments and
where each case's claim lies."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from segcore.volumes import case_id, is_nifti


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
    return f"{case_id(path)}.nii.gz"


def find_cases(input_dir: Path, output_dir: Path | None = None) -> tuple[list[Case], dict[str, str], list[str]]:
    """The cases of ``input_dir``, sorted by name.

    Returns:
        ``(cases, problems, ignored)``: the cases; ``{name: reason}`` for inputs that cannot be
        written (two inputs mapping to one output name); names of entries passed over.
    """
    cases, ignored = [], []
    excluded = output_dir.resolve() if output_dir is not None else None
    for path in sorted(input_dir.iterdir()):
        if path.name.startswith(".") or (path.is_dir() and path.resolve() == excluded):
            continue
        if path.is_dir() or (path.is_file() and is_nifti(path)):
            cases.append(Case(path.name, path, output_name(path)))
        else:
            ignored.append(path.name)
    claimed: dict[str, list[Case]] = {}
    for case in cases:
        claimed.setdefault(case.output_name, []).append(case)
    problems = {}
    for name, owners in claimed.items():
        if len(owners) > 1:
            for case in owners:
                others = ", ".join(other.name for other in owners if other is not case)
                problems[case.name] = f"{case.path}: output name {name} is also claimed by {others}"
    return [case for case in cases if case.name not in problems], problems, ignored


def check_output_folder(folder: Path) -> str | None:
    """Create ``folder`` if missing and try a new file in it; ``None`` when usable, else the reason.

    Writing a probe file is the only sure test: ``os.access`` and the permission bits say yes to
    root on a read-only folder, and a read-only file system is found out only by writing.
    """
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
