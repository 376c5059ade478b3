"""What the extra outputs cost on a full-size CT: DICOM-SEG writing and the preview picture.

Run from the repository root::

    .venv/bin/python -m bench.outputs [--work DIR] [--repeats 3]

The 512 x 512 x 300 phantom CT of :mod:`bench.fixtures` is written once as a DICOM series (300
uncompressed CT slices with study, series and SOP UIDs, kept in ``--work``), read back with
:func:`segcore.volumes.read_volume` and segmented with the default model; then, on that mask,
:func:`segcore.outputs.dicom_seg.write_dicom_seg` and :func:`segcore.outputs.preview.render_preview` are timed
(medians of ``--repeats`` after one warm-up; the preview with the organ volumes given, as
``predict.sh`` does, and counting them itself). Nothing is asserted: this is not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from bench.timing import call_seconds

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_series(folder: Path, image: np.ndarray, geometry) -> Path:
    """``image`` (``(z, y, x)`` int16 HU on ``geometry``) as one CT slice per file (kept if present)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    if folder.is_dir() and len(list(folder.iterdir())) == image.shape[0]:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(geometry.direction).reshape(3, 3)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for z in range(image.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.StudyDate = "CT", "phantom", "Phantom^Bench", "20260101"
        ds.SeriesNumber, ds.InstanceNumber = 1, z + 1
        position = np.asarray(geometry.origin) + direction[:, 2] * geometry.spacing[2] * z
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [float(geometry.spacing[1]), float(geometry.spacing[0])]
        ds.SliceThickness = float(geometry.spacing[2])
        ds.Rows, ds.Columns = image.shape[1], image.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(image[z], dtype="<i2").tobytes()
        ds.save_as(folder / f"slice_{z:04d}.dcm", enforce_file_format=True)
    return folder


def median_seconds(work, repeats: int) -> float:
    return statistics.median(call_seconds(work, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the CT and its DICOM series here (default: a temp folder)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from bench.fixtures import full_size_ct
    from segcore.inference.postprocess import organ_statistics
    from segcore.inference.predictor import Predictor
    from segcore.outputs.dicom_seg import write_dicom_seg
    from segcore.outputs.preview import render_preview
    from segcore.volumes import read_volume

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    work.mkdir(parents=True, exist_ok=True)
    image, geometry = read_volume(full_size_ct(work / "phantom_300.nii.gz", 300))
    series = write_series(work / "phantom_300_dicom", image, geometry)
    image, geometry = read_volume(series)
    predictor = Predictor.from_weights(REPO_ROOT / "model_weights", "cpu")
    prediction = predictor.predict(image, geometry)
    labels = prediction.labels
    hashes = [source["sha256"] for source in predictor.sources.values()]
    out = work / "seg.dcm"
    seg_s = median_seconds(lambda: write_dicom_seg(labels, series, out, checkpoints_sha256=hashes,
                                                   verdict=prediction.quality.verdict), args.repeats)  # fmt: skip
    volumes = {n: s["volume_ml"] for n, s in organ_statistics(labels, image, geometry, within=prediction.box).items()}
    given = median_seconds(lambda: render_preview(image, labels, geometry, volumes_ml=volumes), args.repeats)
    counted = median_seconds(lambda: render_preview(image, labels, geometry), args.repeats)
    organs = int(np.count_nonzero(np.bincount(labels.ravel(), minlength=14)[1:]))
    size = f"{image.shape[0]} slices of {image.shape[1]} x {image.shape[2]}"
    print(f"CT: DICOM series of {size}, {organs} organs in the mask")
    print(f"DICOM-SEG write: median {seg_s:.3f} s, {out.stat().st_size / 1e6:.2f} MB")
    print(f"preview: median {given:.3f} s with the volumes given (predict.sh), {counted:.3f} s counting them")


if __name__ == "__main__":
    main()
