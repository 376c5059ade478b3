"""Response bodies (they also document the API at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Organ(BaseModel):
    label: int = Field(description="FLARE22 label id")
    voxels: int
    volume_ml: float
    mean_hu: float
    box_voxels: list[list[int]] = Field(description="[[x0, x1], [y0, y1], [z0, z1]], half-open, input voxel indices")


class Segmentation(BaseModel):
    """``POST /segment?output=json``."""

    file: str
    size: list[int] = Field(description="input size (x, y, z)")
    spacing: list[float] = Field(description="input spacing (x, y, z) mm")
    organs: dict[str, Organ] = Field(description="organs found, by name")
    crop_box: list[list[int]] | None = Field(description="the fine stage's crop in input voxels (x, y, z), or null")
    timings: dict[str, float] = Field(description="seconds per step")
    warnings: list[str]
    model_notice: str | None = Field(None, description="what the loaded weights must not be used for, if anything")


class Info(BaseModel):
    labels: dict[int, str]
    model: dict
    versions: dict[str, str]
    limits: dict[str, float | int]


class Problem(BaseModel):
    detail: str
