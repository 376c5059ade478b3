"""A full disk under a batch: told apart from a case's own failure, so that the run stops once.

When OUTPUT_DIR's file system is full every later case would fail the same way, each with its
own traceback. :func:`stop_if_disk_full` turns the error into :class:`DiskFull`, which
:func:`predict.batch.predict_cases` lets through after the table is rewritten (if it still fits):
the run keeps what it wrote, prints one line and exits with :data:`DISK_FULL_STATUS`; a rerun
once space is freed finishes it (written cases are skipped).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from segcore.volumes import printable

if TYPE_CHECKING:
    from predict.batch import CaseResult

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_STATUS = 3
"""The exit status of a run stopped by a full disk (a rerun, once space is freed, finishes it)."""


class DiskFull(Exception):
    """The file system of OUTPUT_DIR is full: the run stops, keeping what it wrote.

    Attributes:
        result: the case that was being written when the disk filled, failed (None when none was).
        results: every case settled before the stop (set by :func:`predict.batch.predict_cases`).
        not_attempted: how many cases of this process were not tried.
    """

    def __init__(self, output_dir: Path, error: BaseException, result: CaseResult | None = None):
        detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        super().__init__(f"no space left on the disk holding {printable(output_dir)} ({detail})")
        self.result = result
        self.results: list[CaseResult] = []
        self.not_attempted = 0


def disk_is_full(error: BaseException, output_dir: Path) -> bool:
    """Whether ``error`` means OUTPUT_DIR's file system is full: ``ENOSPC`` (or a quota's
    ``EDQUOT``), or any error while no byte is left there (a library may report it in its own words)."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    try:
        status = os.statvfs(output_dir)
    except OSError:
        return False
    return status.f_bavail == 0


def stop_if_disk_full(error: BaseException, output_dir: Path, result: CaseResult | None = None) -> None:
    """Raise :class:`DiskFull` when ``error`` means the disk is full."""
    if disk_is_full(error, output_dir):
        raise DiskFull(output_dir, error, result) from error
