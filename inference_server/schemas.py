"""Response bodies (they also document the API at ``/docs``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Organ(BaseModel):
    label: int = Field(description="FLARE22 label id")
    voxels: int
    volume_ml: float
    mean_hu: float
    box_voxels: list[list[int]] = Field(description="[[x0, x1], [y0, y1], [z0, z1]], half-open, input voxel indices")


class Quality(BaseModel):
    """How far to trust the segmentation (``segcore.inference.quality``)."""

    verdict: Literal["ok", "review", "fail"]
    reasons: list[str]
    entropy: float = Field(description="fine net's mean normalised entropy over the organ region (0..1)")
    coarse_fine_dice: float = Field(description="agreement of the two stages on the fine crop")
    organ_count: int
    chest_share: float = Field(description="share of body slices that show lungs")
    organs: dict[str, dict] = Field(description="per organ: volume_ml, entropy, uncertain_share, plausible_volume, ...")


class Segmentation(BaseModel):
    """``POST /segment?output=json``: the case record, as ``predict.sh --stats`` writes it
    (:func:`segcore.outputs.case.case_record`)."""

    case: str = Field(description="the case id: the upload's name without NIfTI suffix and _0000")
    input: str = Field(description="the upload's name")
    size: list[int] = Field(description="input size (x, y, z)")
    spacing: list[float] = Field(description="input spacing (x, y, z) mm")
    organs: dict[str, Organ] = Field(description="organs found, by name")
    crop_box: list[list[int]] | None = Field(description="the fine stage's crop in input voxels (x, y, z), or null")
    timings: dict[str, float] = Field(description="seconds per step")
    warnings: list[str]
    model_notice: str | None = Field(None, description="what the loaded weights must not be used for, if anything")
    quality: Quality
    mask_written: bool = Field(description="a mask was made (the service never withholds one)")


class Bundle(Segmentation):
    """``POST /segment?output=bundle``: the summary and every file from one inference (the web page's answer)."""

    mask_nifti_base64: str = Field(description="the label NIfTI (.nii.gz), base64")
    preview_png_base64: str = Field(description="the preview picture, base64")
    dicom_seg_base64: str | None = Field(None, description="the DICOM-SEG for a DICOM input, base64; null for NIfTI")
    dicom_seg_note: str | None = Field(None, description="why there is no DICOM-SEG, if there is none")
    rtstruct_base64: str | None = Field(None, description="the RTSTRUCT for a DICOM input, base64; null for NIfTI")
    rtstruct_note: str | None = Field(None, description="why there is no RTSTRUCT, if there is none")
    ct_nifti_base64: str | None = Field(
        None, description="a DICOM input as the service read it, as .nii.gz, base64, for the page's viewer; "
        "null for a NIfTI input (the page holds it already)"
    )  # fmt: skip


class Info(BaseModel):
    labels: dict[int, str]
    model: dict
    versions: dict[str, str]
    limits: dict[str, float | int]


class Problem(BaseModel):
    detail: str
