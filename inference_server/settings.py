"""Server settings: one class, read from ``SEGMENT_``-prefixed environment variables; the
command line (``sh inference_server/run.sh --weights DIR --device cpu``) overrides them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """What the service loads and how much work it accepts.

    Environment variables: ``SEGMENT_WEIGHTS_DIR``, ``SEGMENT_DEVICE``, ``SEGMENT_PRECISION``,
    ``SEGMENT_MAX_UPLOAD_MB``, ``SEGMENT_MAX_CONCURRENT``, ``SEGMENT_QUEUE_LENGTH``,
    ``SEGMENT_REQUEST_TIMEOUT_S``, ``SEGMENT_IDLE_TIMEOUT_S``, ``SEGMENT_MAX_CONNECTIONS``,
    ``SEGMENT_MAX_UNPACKED_MB``, ``SEGMENT_MAX_ZIP_MEMBERS``, ``SEGMENT_MAX_COMPRESSION_RATIO``,
    ``SEGMENT_API_KEY``. Temporary files go to ``TMPDIR`` (default ``/tmp``), one private folder
    per request, removed when its work ends.
    """

    model_config = SettingsConfigDict(env_prefix="SEGMENT_", frozen=True)

    weights_dir: Path | None = Field(None, description="folder with coarse.pt and fine.pt (default: model_weights/)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    max_upload_mb: float = Field(1024.0, gt=0, description="larger uploads get 413")
    max_concurrent: int = Field(1, ge=1, description="inferences running at once")
    queue_length: int = Field(4, ge=0, description="requests waiting for a slot; beyond them 503")
    request_timeout_s: float = Field(600.0, gt=0, description="wait + inference; beyond it 504")
    idle_timeout_s: float = Field(
        15.0, gt=0, description="longest silence from a client: before its request (then closed) or in its body (408)"
    )
    max_connections: int = Field(64, ge=1, description="open connections at once; beyond them 503")
    max_uploads: int = Field(
        8, ge=1, description="POST /segment bodies streaming in at once, apart from the queue; beyond them 503"
    )
    head_timeout_s: float = Field(
        10.0, gt=0, description="a request's head must be complete this long after its first byte (else closed)"
    )
    upload_grace_s: float = Field(10.0, ge=0, description="after this, an upload must keep min_upload_kib_s (408)")
    min_upload_kib_s: float = Field(32.0, ge=0, description="slowest mean upload rate accepted after the grace (408)")
    upload_deadline_s: float = Field(300.0, gt=0, description="a whole upload within this, whatever its rate (408)")
    max_unpacked_mb: float = Field(2048.0, gt=0, description="a zipped DICOM series unpacks to at most this (413)")
    max_zip_members: int = Field(5000, ge=1, description="files in a zipped DICOM series (422 beyond)")
    max_compression_ratio: float = Field(
        100.0, gt=1, description="unpacked / packed bytes of a zip member and of the whole zip (413 beyond)"
    )
    api_key: SecretStr | None = Field(None, description="when set, requests need this X-API-Key")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_unpacked_bytes(self) -> int:
        return int(self.max_unpacked_mb * 1024 * 1024)
