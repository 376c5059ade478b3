"""Server settings: one class, read from ``SEGMENT_``-prefixed environment variables; the
command line (``sh inference_server/run.sh --weights DIR --device cpu``) overrides them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MEMORY_BYTES_PER_VOXEL = 4.0
MEMORY_SERIES_BYTES_PER_VOXEL = 7.6
MEMORY_BASE_MB = 376.0
"""A request's expected peak memory: ``memory_base_mb`` (MiB) + ``memory_bytes_per_voxel`` × input voxels
(``memory_series_bytes_per_voxel`` for a zipped DICOM series, whose answer may also carry a
DICOM-SEG, an RTSTRUCT and the CT as NIfTI for the page's viewer). Measured with
``bench.memory_admission`` (the default model on a 2-core CPU): 512 x 512 phantoms of 100 to 2000
slices as NIfTI (each also on a permuted grid and as a volume of air), 0.39-2.24 GB; the same CTs
of 100 to 1200 slices as DICOM series, bundle answer, 0.49-2.52 GB. These defaults estimate every
measured request at 1.11-1.49 times its cost (NIfTI) and 1.10-1.21 (series): never under."""


class Settings(BaseSettings):
    """What the service loads and how much work it accepts.

    Environment variables: every field below as ``SEGMENT_<FIELD>`` (``SEGMENT_MAX_UPLOAD_MB``,
    ``SEGMENT_API_KEY``, ...). Temporary files go to ``TMPDIR`` (default ``/tmp``), one private
    folder per request, removed when its work ends. The memory defaults fit a 24 GB machine.
    """

    model_config = SettingsConfigDict(env_prefix="SEGMENT_", frozen=True)

    weights_dir: Path | None = Field(
        None, description="folder with coarse.pt and fine.pt (default: $SEGCORE_WEIGHTS, else the shipped model)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    body_region: bool = Field(False, description="arms, table, cushions outside the trunk set to air first")
    max_upload_mb: float = Field(1024.0, gt=0, description="larger uploads get 413")
    max_concurrent: int = Field(1, ge=1, description="inferences running at once")
    queue_length: int = Field(4, ge=0, description="requests waiting for a slot; beyond them 503")
    request_timeout_s: float = Field(600.0, gt=0, description="wait + inference; beyond it 504")
    idle_timeout_s: float = Field(
        15.0, gt=0, description="longest silence from a client: before its request (then closed) or in its body (408)"
    )
    max_connections: int = Field(
        64, ge=1, description="connections holding a place; a newcomer takes the place of the longest idle one"
    )
    max_uploads: int = Field(
        8, ge=1, description="POST /segment bodies streaming in at once, apart from the queue; beyond them 503"
    )
    head_timeout_s: float = Field(
        10.0, gt=0, description="a request's head must be complete this long after its first byte (else closed)"
    )
    upload_grace_s: float = Field(10.0, ge=0, description="after this, an upload must keep min_upload_kib_s (408)")
    min_upload_kib_s: float = Field(32.0, ge=0, description="slowest mean upload rate accepted after the grace (408)")
    upload_deadline_s: float = Field(300.0, gt=0, description="a whole upload within this, whatever its rate (408)")
    max_request_memory_mb: float = Field(
        8192.0, gt=0, description="a request whose expected peak memory is over this gets 413 from its header"
    )
    memory_budget_mb: float = Field(
        16384.0, gt=0, description="expected peak memory of every admitted request together; beyond it 503"
    )
    memory_bytes_per_voxel: float = Field(
        MEMORY_BYTES_PER_VOXEL, gt=0, description="expected peak memory per input voxel (bench.memory_admission)"
    )
    memory_series_bytes_per_voxel: float = Field(
        MEMORY_SERIES_BYTES_PER_VOXEL, gt=0, description="the same for a zipped DICOM series (SEG, RTSTRUCT, CT copy)"
    )
    memory_base_mb: float = Field(MEMORY_BASE_MB, ge=0, description="expected peak memory of any request, plus voxels")
    max_unpacked_mb: float = Field(2048.0, gt=0, description="a zipped DICOM series unpacks to at most this (413)")
    max_zip_members: int = Field(5000, ge=1, description="files in a zipped DICOM series (422 beyond)")
    max_compression_ratio: float = Field(
        100.0, gt=1, description="unpacked / packed bytes of a zip member and of the whole zip (413 beyond)"
    )
    api_key: SecretStr | None = Field(None, description="when set, requests need this X-API-Key")
    host: str = Field("127.0.0.1", description="the address the service is bound to (run.sh --host)")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        [], description="Host header names answered, comma-separated; '*' any (default: host, localhost, "
        "127.0.0.1, ::1); others get 400"
    )  # fmt: skip
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        [], description="browser origins (scheme://host[:port]) allowed to POST besides the service's own, "
        "comma-separated; '*' any; others get 403"
    )  # fmt: skip

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def comma_separated(cls, value: str | list[str]) -> list[str]:
        items = value.split(",") if isinstance(value, str) else value
        return [item.strip() for item in items if item.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_unpacked_bytes(self) -> int:
        return int(self.max_unpacked_mb * 1024 * 1024)
