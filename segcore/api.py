"""The Python API: segment a CT in one call, the way ``predict.sh`` does for a folder.

::

    import segcore

    result = segcore.segment("ct_0000.nii.gz", "ct.nii.gz")      # a file or a DICOM series folder
    print(result.verdict, result.record.organs["liver"].volume_ml)
    result.labels                                               # SimpleITK image on the input's grid

    import SimpleITK as sitk, nibabel as nib
    segcore.segment(sitk.ReadImage("ct.nii.gz"))                 # an image already in memory
    segcore.segment(nib.load("ct.nii.gz"), organs=["liver", "spleen"])

``segment`` reads the input with the same checks as the batch command (:func:`segcore.volumes.read_volume`),
runs the two-stage :class:`~segcore.inference.predictor.Predictor` (built once per weights, device
and options, then reused), and returns a :class:`Segmentation`: the FLARE22 label map on the
input's exact grid, the :class:`~segcore.inference.predictor.Prediction` with its quality verdict,
and the case record (:class:`segcore.outputs.records.CaseRecord`: ``predict.sh``'s ``<id>.json``
and the service's JSON answer, typed). With ``output`` the mask is also written as NIfTI
(for DICOM-SEG, RTSTRUCT and previews use ``predict.sh``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from segcore.inference.postprocess import organ_statistics
from segcore.inference.predictor import Prediction, Predictor, default_weights_dir
from segcore.outputs.case import case_record, only_organs, organ_subset
from segcore.outputs.records import CaseRecord
from segcore.volumes import read_image, read_volume, write_volume
from segcore.volumes.geometry import Geometry
from segcore.volumes.itk import to_image


@dataclass(frozen=True)
class Segmentation:
    """What :func:`segment` returns.

    Attributes:
        array: ``(z, y, x)`` uint8 FLARE22 ids (:mod:`segcore.labels`) in the input's array order.
        geometry: the input's size, spacing, origin and direction (the mask's, exactly).
        prediction: the predictor's result: crop box, warnings, timings and ``quality`` (the verdict).
        record: the case record (:class:`~segcore.outputs.records.CaseRecord`): size, spacing,
            per organ volume (mL) and mean HU, crop box, warnings, quality, model notice, timings.
    """

    array: np.ndarray
    geometry: Geometry
    prediction: Prediction
    record: CaseRecord

    @property
    def labels(self) -> sitk.Image:
        """The label map as a SimpleITK image on the input's grid."""
        return to_image(self.array, self.geometry)

    @property
    def verdict(self) -> str:
        """How far to trust the mask: ``ok``, ``review`` or ``fail`` (reasons in ``record.quality``)."""
        return self.prediction.quality.verdict

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask as NIfTI (``.nii`` or ``.nii.gz``) on the input's grid; returns the path."""
        write_volume(path, self.array, self.geometry)
        return Path(path)


@functools.lru_cache(maxsize=4)
def _predictor(weights: str, device: str, precision: str, body_region: bool) -> Predictor:
    return Predictor.from_weights(weights, device, precision, body_region=body_region)


def segment(
    image: str | os.PathLike | sitk.Image | Any,
    output: str | os.PathLike | None = None,
    *,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    organs: Sequence[str] | None = None,
    body_region: bool = False,
) -> Segmentation:
    """Segment one CT.

    Args:
        image: a NIfTI file, a folder holding one DICOM series, a 3-D SimpleITK image (checked as a
            file is: :func:`segcore.volumes.read_image`) or a nibabel image (read through a
            temporary NIfTI file, so every reader check applies).
        output: also write the mask here (NIfTI).
        weights: a folder with ``coarse.pt`` and ``fine.pt`` (default: ``$SEGCORE_WEIGHTS``, else the shipped model).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``auto`` | ``fp32`` | ``fp16`` | ``bf16``.
        organs: names (:data:`segcore.labels.ORGANS`) to keep; the others are left out of the mask
            and the record. None: all 13.
        body_region: blank everything outside the trunk first (``predict.sh --body-region``).

    Returns:
        The :class:`Segmentation`.

    Raises:
        VolumeError: the input cannot be read or is not a 3-D CT in HU (naming the file and the reason).
        ValueError: an unknown organ name or an input of another type.
        FileNotFoundError: the weights folder lacks ``coarse.pt`` or ``fine.pt``.
    """
    kept = organ_subset(",".join(organs)) if organs is not None else None
    array, geometry, name = _read(image)
    predictor = _predictor(str(weights or default_weights_dir()), str(device), precision, body_region)
    prediction = predictor.predict(array, geometry)
    if kept is not None:
        prediction = dataclasses.replace(prediction, labels=only_organs(prediction.labels, kept))
    statistics = organ_statistics(prediction.labels, array, geometry, within=prediction.box)
    record = case_record(name, name, prediction, geometry, statistics, predictor.notice)
    result = Segmentation(prediction.labels, geometry, prediction, record)
    if output is not None:
        result.save(output)
    return result


def _read(image: Any) -> tuple[np.ndarray, Geometry, str]:
    """``(array, geometry, name)`` of any input :func:`segment` takes."""
    if isinstance(image, str | os.PathLike):
        array, geometry = read_volume(image)
        return array, geometry, Path(image).name
    if isinstance(image, sitk.Image):
        return *read_image(image, "image"), "image"
    if type(image).__module__.startswith("nibabel"):
        import nibabel as nib

        with tempfile.TemporaryDirectory(prefix="segcore-") as folder:
            path = Path(folder) / "image.nii"
            nib.save(image, path)
            array, geometry = read_volume(path)
        return array, geometry, "image"
    raise ValueError(f"segment: a path, a SimpleITK image or a nibabel image is needed, got {type(image).__name__}")
