"""Response bodies (they also document the API at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from segcore.outputs.records import CaseRecord


class Segmentation(CaseRecord):
    """``POST /segment?output=json``: the case record, as ``predict.sh --stats`` writes it
    (:class:`segcore.outputs.records.CaseRecord`)."""


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
