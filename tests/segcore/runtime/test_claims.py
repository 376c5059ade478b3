"""Claims: one holder at a time, and a waiter ends on the lock file the path names."""

from __future__ import annotations

import os
import threading
import time

from segcore.runtime.claims import claim_case


def test_a_waiting_claim_ends_on_the_lock_file_the_path_names(tmp_path):
    path = tmp_path / ".case.lock"
    held = claim_case(path, wait=False)
    assert claim_case(path, wait=False) is None
    waited = []
    waiter = threading.Thread(target=lambda: waited.append(claim_case(path, wait=True)))
    waiter.start()
    time.sleep(0.5)  # the waiter opens the lock file and waits for its lock
    held.release()  # removes that file first: a lock on it now guards nothing
    waiter.join(timeout=10)
    assert os.path.samestat(os.fstat(waited[0].descriptor), path.stat())
    waited[0].release()
    assert not path.exists()
