"""Run the service as a separate process on a free loopback port, for scripts, tests and benchmarks.

::

    from inference_server.local import LocalServer

    with LocalServer("model_weights", device="cpu", max_concurrent="1") as url:
        httpx.post(f"{url}/segment", files={"file": open("ct.nii.gz", "rb")})

The process is ``inference_server/run.sh`` exactly as a user starts it; keyword settings become
``SEGMENT_*`` environment variables (:class:`inference_server.settings.Settings`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

RUN_SH = Path(__file__).resolve().parent / "run.sh"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """``run.sh`` on 127.0.0.1 and a free port; entering waits until ``/ready`` answers 200.

    Args:
        weights: folder with ``coarse.pt`` and ``fine.pt``.
        device: ``auto``, ``cpu`` or ``cuda``.
        ready_timeout: seconds to wait for ``/ready``.
        environment: further environment variables of the server process (e.g. its ``TMPDIR``).
        log_level: uvicorn's ``--log-level`` (:meth:`output` holds what the server printed).
        **settings: further settings, e.g. ``max_upload_mb="4"`` → ``SEGMENT_MAX_UPLOAD_MB=4``.

    Raises:
        RuntimeError: on entering, when the process exits or is not ready in time (with its output).
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        device: str = "cpu",
        ready_timeout: float = 180,
        *,
        environment: dict[str, str] | None = None,
        log_level: str = "warning",
        **settings: str,
    ):
        self.weights, self.device, self.ready_timeout = Path(weights), device, ready_timeout
        self.log_level = log_level
        settings_environment = {f"SEGMENT_{key.upper()}": value for key, value in settings.items()}
        self.environment = {**(environment or {}), **settings_environment}
        self.process: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> str:
        port = free_port()
        self._log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks
        self.process = subprocess.Popen(
            ["sh", str(RUN_SH), "--port", str(port), "--weights", str(self.weights), "--device", self.device,
             "--log-level", self.log_level],
            env={**os.environ, **self.environment}, stdout=self._log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"the server exited with status {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self._fail(f"the server was not ready within {self.ready_timeout:g} s")

    def output(self) -> str:
        """What the server printed so far (standard output and error)."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def _fail(self, reason: str) -> None:
        self._stop()
        self._log.seek(0)
        output = self._log.read()
        self._log.close()
        raise RuntimeError(f"{reason}; its output:\n{output}")

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(self, *exc_info) -> None:
        self._stop()
        self._log.close()
