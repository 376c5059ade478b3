"""predict.sh's front door: one file, one series or a folder of them; what is plainly not a CT passed
over with its reason; --organs, --device cuda:N and the RTSTRUCT output."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from predict import batch as predict
from predict.batch import find_cases, main
from predict.screen import not_a_ct
from segcore.inference.predictor import Predictor
from segcore.labels import ORGAN_IDS, ORGANS
from segcore.volumes import read_volume, write_volume


@pytest.fixture(scope="module")
def mr_series(real_data, tmp_path_factory):
    """The real series relabelled Modality MR."""
    folder = tmp_path_factory.mktemp("mr")
    for path in sorted((real_data / "abdomen_ct_dicom").iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.Modality = "MR"
        dataset.save_as(folder / path.name)
    return folder


def test_what_is_plainly_not_a_ct_is_passed_over_with_its_reason(real_data, mr_series, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    links = {
        "ct_0000.nii.gz": "abdomen_ct_3mm.nii.gz", "ct.nii.gz": "abdomen_ct_3mm_labels.nii.gz",
        "chest_0000.nii.gz": "chest_crop_1p5mm.nii.gz", "dicom_labels.nii.gz": "abdomen_ct_dicom_labels.nii.gz",
        "mr4d.nii.gz": "mr_4d_oblique.nii.gz", "series": "abdomen_ct_dicom", "slice": "single_slice_ct.dcm",
    }  # fmt: skip
    for name, target in links.items():
        (folder / name).symlink_to(real_data / target)
    (folder / "mr").symlink_to(mr_series, target_is_directory=True)
    image, geometry = read_volume(real_data / "abdomen_ct_3mm.nii.gz")
    # a label map stored as int16, and a CT whose first slices are all air at one value
    write_volume(folder / "int16_labels.nii.gz", (image > 0).astype(np.int16) * 3, geometry)
    padded = image.copy()
    padded[:8] = -1024
    write_volume(folder / "padded_0000.nii.gz", padded, geometry)
    cases, problems, passed_over = find_cases(folder, tmp_path / "out")
    assert [case.name for case in cases] == ["chest_0000.nii.gz", "ct_0000.nii.gz", "padded_0000.nii.gz", "series"]
    assert not problems  # the mask ct.nii.gz no longer claims the CT's output name
    assert passed_over["ct.nii.gz"].startswith("a label map (uint8 with 13 distinct values: 0, 1, 2,")
    assert passed_over["dicom_labels.nii.gz"].startswith("a label map (uint8")
    assert passed_over["int16_labels.nii.gz"] == "a label map (int16 with 2 distinct values: 0, 3), not a CT"
    assert passed_over["mr4d.nii.gz"] == "a 4-D image (128×96×24×2), not a 3-D CT"
    assert passed_over["mr"] == "a DICOM series of Modality MR, not CT"
    assert passed_over["slice"] == "neither NIfTI nor a folder"


def test_the_label_map_look_reads_only_the_first_slices(real_data, tmp_path, monkeypatch):
    image, geometry = read_volume(real_data / "abdomen_ct_3mm.nii.gz")
    labels = np.zeros(image.shape, np.int16)
    labels[5:] = image[5:]  # a CT below a slab of zeros: the look at the first slab alone calls it a label map
    write_volume(tmp_path / "odd.nii.gz", labels, geometry)
    slab = image.shape[1] * image.shape[2] * 2
    monkeypatch.setattr("predict.screen.SAMPLE_BYTES", 4 * slab)
    assert not_a_ct(tmp_path / "odd.nii.gz").startswith("a label map (int16 with 1 distinct values")
    monkeypatch.setattr("predict.screen.SAMPLE_BYTES", 6 * slab)
    assert not_a_ct(tmp_path / "odd.nii.gz") is None
    assert not_a_ct(tmp_path / "missing.nii.gz") is None  # the reader reports what the look cannot tell


def test_one_file_or_one_series_folder_is_one_case(real_data, weights, tmp_path, capsys, one_thread):
    scan = tmp_path / "scan.nii.gz"
    scan.symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    assert main(["-i", str(scan), "-o", str(tmp_path / "out"), "--weights", str(weights), "--no-progress"]) == 0
    assert "written 1, skipped 0" in capsys.readouterr().out
    assert (tmp_path / "out" / "scan.nii.gz").is_file()
    [case], _, _ = find_cases(real_data / "abdomen_ct_dicom")
    assert (case.name, case.output_name) == ("abdomen_ct_dicom", "abdomen_ct_dicom.nii.gz")
    for given, reason in (("none.nii.gz", "does not exist"), ("notes.txt", "is neither a NIfTI file")):
        (tmp_path / "notes.txt").write_text("not an image\n")
        assert main(["-i", str(tmp_path / given), "-o", str(tmp_path / "out"), "--weights", str(weights)]) == 2
        assert capsys.readouterr().err.startswith(f"predict: input {tmp_path / given} {reason}")


def test_an_unknown_organ_is_refused_with_the_valid_names_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "--organs", "liver,lungs"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "unknown organ name(s) lungs; valid names: liver, right_kidney, spleen," in error
    assert not (tmp_path / "out").exists()


def test_organs_keeps_those_organs_alone_in_every_output(real_data, weights, tmp_path, capsys, one_thread):
    source = tmp_path / "ct_0000.nii.gz"
    source.symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    common = ["-i", str(source), "--weights", str(weights), "--no-progress", "--stats"]
    assert main([*common, "-o", str(tmp_path / "all")]) == 0
    assert main([*common, "-o", str(tmp_path / "some"), "--organs", "spleen, liver"]) == 0
    every = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "all" / "ct.nii.gz")))
    some = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "some" / "ct.nii.gz")))
    kept = [ORGAN_IDS["liver"], ORGAN_IDS["spleen"]]
    assert np.isin(every, kept).any()
    np.testing.assert_array_equal(some, np.where(np.isin(every, kept), every, 0))
    import json

    organs = json.loads((tmp_path / "some" / "ct.json").read_text())["organs"]
    assert set(organs) == {ORGANS[v] for v in np.unique(some) if v} and set(organs) <= {"liver", "spleen"}


def test_cuda_n_is_parsed_and_refused_clearly_without_cuda(tmp_path, capsys):
    assert predict.parse_args(["--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit):
        predict.parse_args(["--device", "cuda:one"])
    assert "'cuda:one': expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "--device", "cuda:1"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "predict: device 'cuda:1' asked for, but CUDA is not available on this machine"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_n_names_the_gpu_the_predictor_runs_on():
    last = torch.cuda.device_count() - 1
    assert predict.setup_context(f"cuda:{last}").device == torch.device("cuda", last)
    with pytest.raises(RuntimeError, match="has .* CUDA device"):
        predict.named_gpu(f"cuda:{last + 1}")


def test_an_rtstruct_beside_the_mask_for_a_series_and_a_warning_for_a_nifti(
    real_data, series_with_uids, weights, tmp_path, one_thread
):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "series").symlink_to(series_with_uids, target_is_directory=True)
    (folder / "ct_0000.nii.gz").symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    cases, _, _ = find_cases(folder, out)
    predictor = Predictor.from_weights(weights, "cpu")
    outputs = predict.Outputs.from_args(predict.parse_args(["--output-type", "nifti,rtstruct"]))
    results = {r.name: r for r in predict.predict_cases(predictor, cases, out, outputs=outputs, progress=False)}
    assert {name: r.status for name, r in results.items()} == {"series": "written", "ct_0000.nii.gz": "written"}
    assert results["ct_0000.nii.gz"].warnings == [
        "no RTSTRUCT: the input is NIfTI; an RTSTRUCT references a DICOM source series"
    ]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "ct.nii.gz", "series.nii.gz", "series_rtstruct.dcm", "summary.csv"
    ]  # fmt: skip
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "series.nii.gz")))
    rtstruct = pydicom.dcmread(out / "series_rtstruct.dcm")
    assert {roi.ROIName for roi in rtstruct.StructureSetROISequence} == {ORGANS[v] for v in np.unique(mask) if v}
    assert predict.outputs_exist(cases[1], out, outputs) and predict.outputs_exist(cases[0], out, outputs)
    only = predict.Outputs.from_args(predict.parse_args(["--output-type", "rtstruct"]))
    (tmp_path / "alone").mkdir()
    [refused] = predict.predict_cases(predictor, [cases[0]], tmp_path / "alone", outputs=only, progress=False)
    assert refused.status == "failed" and "no RTSTRUCT: the input is NIfTI" in refused.reason
