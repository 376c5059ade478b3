"""Exclusive claims on work items shared by concurrent processes: an ``flock`` on a lock file.

A process holds a :class:`Claim` while it works on an item; another process asking for the same
item gets ``None`` (or waits). The kernel drops a process's locks when it exits or is killed, so
a claim left by a killed process passes to the next one with no stale-lock handling.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Claim:
    """This run's hold on one case: an open lock file carrying an exclusive ``flock``."""

    path: Path
    descriptor: int

    def release(self) -> None:
        """Remove the lock file, then drop the lock.

        In this order a run that opens the path afterwards creates a new file, and one that had
        opened the old file before the removal sees, once it holds the lock, that the path no
        longer names that file (:func:`claim_case` then tries again). Dropping the lock first
        would let a third run lock the old file just before its removal, while a fourth locks
        the new one.
        """
        self.path.unlink(missing_ok=True)
        os.close(self.descriptor)


def claim_case(path: Path, *, wait: bool) -> Claim | None:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); ``None`` when another process
    holds it and ``wait`` is false.

    The kernel drops a process's locks when it exits or is killed, so a lock file left by a
    killed run is simply taken over. A lock taken on a file that its holder removed meanwhile
    (see :meth:`Claim.release`) guards nothing; the path is opened again until the lock held is
    on the file the path names.
    """
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as error:
            os.close(descriptor)
            if isinstance(error, BlockingIOError):
                return None
            raise
        try:
            if os.path.samestat(os.fstat(descriptor), os.stat(path)):
                return Claim(path, descriptor)
        except FileNotFoundError:
            pass
        os.close(descriptor)
