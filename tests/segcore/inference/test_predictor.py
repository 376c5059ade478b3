"""The two-stage predictor: input grid kept, orientation-equivariant, empty coarse stage, building blocks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from segcore.inference import stage as stage_module
from segcore.inference.boxes import box_to_original, expand_box, scale_box
from segcore.inference.postprocess import organ_statistics
from segcore.inference.predictor import DEFAULT_WEIGHTS_DIR, CoarseLocator, Predictor
from segcore.inference.stage import StageModel, Stopwatch, resolve_precision
from segcore.labels import HU_WINDOW, NUM_CLASSES
from segcore.networks import build_network
from segcore.networks.checkpoint import make_payload, network_entry
from segcore.phantom.scanner import stored_geometry
from segcore.volumes import read_volume, write_volume
from segcore.volumes.geometry import canonical_reorientation, to_canonical
from segcore.volumes.intensity import normalize_hu
from segcore.volumes.resample import resize_image
from testkit import TINY_NET, tiny_payload, write_tiny_weights

CT_3MM = "abdomen_ct_3mm.nii.gz"
DICOM = "abdomen_ct_dicom"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets: one thread is fastest, and on a shared machine several threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor.from_weights(write_tiny_weights(tmp_path_factory.mktemp("weights")), device="cpu")


class SubBoxCoarseNet(nn.Module):
    """A stand-in coarse net: liver in a fixed part of its (canonical) input grid, plus a stray voxel.

    Liver fills coarse voxels z 4:12, y 2:8, x 8:14 of the 16^3 grid; the liver voxels at the
    origin are not connected to it and must be dropped by the largest-component clean-up. Like the
    real nets it gives half-resolution logits when asked (the predictor upsamples them x2): the
    region's bounds are even and the liver logit is 2 against 1, so after the upsampling the liver
    is again exactly the region (its trilinear weights 0.25 / 0.75 give 0.5 < 1 < 1.5).
    """

    region = ((4, 12), (2, 8), (8, 14))

    def forward(self, x: torch.Tensor, half_resolution: bool = False) -> torch.Tensor:
        factor = 2 if half_resolution else 1
        logits = torch.zeros((x.shape[0], NUM_CLASSES, *(size // factor for size in x.shape[2:])))
        logits[:, 0] = 1.0
        (z0, z1), (y0, y1), (x0, x1) = ((low // factor, high // factor) for low, high in self.region)
        logits[:, 1, z0:z1, y0:y1, x0:x1] = 2.0
        logits[:, 1, 0, 0, 0] = 2.0
        return logits


@pytest.fixture(scope="module")
def sub_box_predictor() -> Predictor:
    predictor = Predictor(tiny_payload("coarse"), tiny_payload("fine", seed=1), device="cpu")
    predictor.locator.model.nets = [SubBoxCoarseNet()]
    return predictor


@pytest.mark.parametrize("name", [CT_3MM, DICOM])
def test_real_ct_mask_has_exactly_the_input_grid(predictor, real_data, tmp_path, name):
    prediction, image, geometry = predictor.predict_file(real_data / name)
    labels = prediction.labels
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert labels.max() <= 13 and labels.any()
    assert prediction.warnings == [] and prediction.coarse_organs == [1]
    # The stand-in coarse net finds liver everywhere: the crop is the whole volume.
    assert prediction.box == [[0, geometry.size[0]], [0, geometry.size[1]], [0, geometry.size[2]]]
    assert {"reorient", "coarse_network", "fine_network", "fine_restore", "total", "read"} <= set(prediction.timings)

    write_volume(tmp_path / "mask.nii.gz", labels, geometry)
    written = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    source = sitk.ReadImage(str(real_data / name)) if name.endswith(".gz") else None
    assert written.GetSize() == geometry.size
    np.testing.assert_allclose(written.GetSpacing(), geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), geometry.origin, atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), geometry.direction, atol=1e-6)
    if source is not None:  # NIfTI in, NIfTI out: the header geometry is the very same
        assert written.GetSpacing() == source.GetSpacing() and written.GetOrigin() == source.GetOrigin()
        assert written.GetDirection() == source.GetDirection()
    assert written.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(written), labels)

    statistics = organ_statistics(labels, image, geometry)
    assert sum(organ["voxels"] for organ in statistics.values()) == int(np.count_nonzero(labels))


def test_empty_coarse_stage_gives_an_empty_mask_and_a_warning(real_data):
    predictor = Predictor(tiny_payload("coarse", winner=0), tiny_payload("fine", seed=1), device="cpu")
    prediction, image, _ = predictor.predict_file(real_data / CT_3MM)
    assert prediction.labels.shape == image.shape and prediction.labels.dtype == np.uint8
    assert not prediction.labels.any()
    assert prediction.box is None and prediction.coarse_organs == []
    assert len(prediction.warnings) == 1 and "no organ" in prediction.warnings[0]


def test_values_that_are_not_hounsfield_units_are_segmented_with_a_warning(real_data):
    # Every caller (the batch, the service, segcore.segment) gets it from the predictor.
    predictor = Predictor(tiny_payload("coarse", winner=0), tiny_payload("fine", seed=1), device="cpu")
    image, geometry = read_volume(real_data / CT_3MM)
    rescaled = predictor.predict(image.astype(np.float32) * 1000, geometry)
    assert any(warning.startswith("values are not plausible Hounsfield units") for warning in rescaled.warnings)
    assert not any("Hounsfield" in warning for warning in predictor.predict(image, geometry).warnings)


DIRECTIONS = {
    "x and y flipped": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "slices top to bottom": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    "coronal slices": (1, 0, 0, 0, 0, -1, 0, 1, 0),
    "sagittal slices": (0, 0, 1, 1, 0, 0, 0, 1, 0),
}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_any_stored_orientation_gives_the_canonical_labels_mapped_back(sub_box_predictor, real_data, direction):
    image, geometry = read_volume(real_data / CT_3MM)
    canonical_image, reorientation = to_canonical(image, geometry)
    canonical = reorientation.canonical
    reference = sub_box_predictor.predict(np.ascontiguousarray(canonical_image), canonical)

    stored = stored_geometry(canonical.size, canonical.spacing, canonical.origin, direction)
    stored_reorientation = canonical_reorientation(stored)
    assert stored_reorientation.canonical.same_grid(canonical)
    stored_image = np.ascontiguousarray(stored_reorientation.undo(canonical_image))
    prediction = sub_box_predictor.predict(stored_image, stored)

    assert prediction.labels.shape == stored_image.shape
    assert np.array_equal(stored_reorientation.apply(prediction.labels), reference.labels)
    # The crop is the stand-in's liver box (the stray voxel dropped) scaled to full resolution plus 20 mm.
    organ_box = scale_box(SubBoxCoarseNet.region, (16, 16, 16), canonical.shape_zyx)
    expected = expand_box(organ_box, 20.0, canonical.spacing_zyx, canonical.shape_zyx)
    assert expected != tuple((0, size) for size in canonical.shape_zyx), "the crop should be a part of the volume"
    assert prediction.box == box_to_original(expected, stored_reorientation)
    assert reference.box == box_to_original(expected, canonical_reorientation(canonical))
    (z0, z1), (y0, y1), (x0, x1) = expected
    outside = reference.labels.copy()
    outside[z0:z1, y0:y1, x0:x1] = 0
    assert not outside.any(), "labels outside the crop box"


def test_coarse_locator_alone_and_through_the_predictor(sub_box_predictor, real_data):
    image, geometry = read_volume(real_data / CT_3MM)
    canonical_image, reorientation = to_canonical(image, geometry)
    spacing = reorientation.canonical.spacing_zyx
    locator = CoarseLocator(tiny_payload("coarse", winner=1), device="cpu")
    found = locator.locate(canonical_image, spacing)
    assert found.organs == [1] and found.labels.shape == (16, 16, 16)
    assert found.organ_box == found.box == tuple((0, size) for size in canonical_image.shape)
    box = sub_box_predictor.locator.locate(canonical_image, spacing).box
    assert box == expand_box(scale_box(SubBoxCoarseNet.region, (16,) * 3, canonical_image.shape), 20.0, spacing,
                             canonical_image.shape)  # fmt: skip


def test_a_half_resolution_coarse_answer_finds_the_box_on_half_the_grid(real_data):
    """The stand-in net's region has even bounds: on the 8³ half grid it covers the same part of the
    field of view, so the box is the full-resolution answer's; an unknown grid is refused."""
    image, geometry = read_volume(real_data / CT_3MM)
    canonical_image, reorientation = to_canonical(image, geometry)
    spacing = reorientation.canonical.spacing_zyx
    found = {}
    for grid in ("full", "half"):
        locator = CoarseLocator(tiny_payload("coarse"), device="cpu", coarse_resolution=grid)
        locator.model.nets, locator.model.half_resolution = [SubBoxCoarseNet()], grid == "half"
        found[grid] = locator.locate(canonical_image, spacing)
    assert found["half"].labels.shape == (8, 8, 8) and found["full"].labels.shape == (16, 16, 16)
    assert found["half"].box == found["full"].box and found["half"].organs == [1]
    with pytest.raises(ValueError, match="coarse_resolution must be half or full"):
        CoarseLocator(tiny_payload("coarse"), device="cpu", coarse_resolution="quarter")


def test_the_coarse_stage_answers_at_half_resolution_only_where_every_net_can():
    """A pair with deep supervision answers on 8³; one net without it makes the stage answer on 16³."""
    nets = [build_network("residual_unet3d", **TINY_NET, deep_supervision=deep) for deep in (True, True, False)]

    def stage(members):
        payload = make_payload("coarse", [network_entry(n, [16] * 3) for n in members], [16] * 3, HU_WINDOW, {})
        cpu = torch.device("cpu")
        return StageModel.from_payload(payload, "coarse", cpu, torch.float32, False, half_resolution=True)

    image = torch.zeros((16, 16, 16))
    half, full = stage(nets[:2]), stage(nets)
    assert (half.half_resolution, half.output_size) == (True, (8, 8, 8))
    assert (full.half_resolution, full.output_size) == (False, (16, 16, 16))
    assert half.probabilities(image, Stopwatch(torch.device("cpu"))).shape == (NUM_CLASSES, 8, 8, 8)
    assert full.probabilities(image, Stopwatch(torch.device("cpu"))).shape == (NUM_CLASSES, 16, 16, 16)


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_on_the_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(stage_module, "native_bf16", lambda: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16


def test_precision_and_checkpoint_checks(real_data, tmp_path):
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="'fine' checkpoint was given as the coarse model"):
        Predictor(tiny_payload("fine"), tiny_payload("fine"), device="cpu")
    with pytest.raises(FileNotFoundError, match="no model weights in .* coarse.pt and fine.pt"):
        Predictor.from_weights(tmp_path / "nowhere", device="cpu")
    bf16 = Predictor(tiny_payload("coarse", winner=1), tiny_payload("fine", seed=1), device="cpu", precision="bf16")
    prediction, image, _ = bf16.predict_file(real_data / CT_3MM)
    assert prediction.labels.shape == image.shape and bf16.info()["precision"] == "bfloat16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_prediction_keeps_the_grid(real_data):
    predictor = Predictor(tiny_payload("coarse", winner=1), tiny_payload("fine", seed=1), device="cuda")
    assert predictor.info()["precision"] == "float16"
    prediction, image, _ = predictor.predict_file(real_data / DICOM)
    assert prediction.labels.shape == image.shape and prediction.labels.dtype == np.uint8
    assert prediction.labels.max() <= 13


def test_the_checkpoints_notice_is_said_once_and_only_when_there_is_one():
    assert Predictor(tiny_payload("coarse"), tiny_payload("fine"), device="cpu").notice is None
    marked = {**tiny_payload("fine"), "notice": "not for real scans"}
    both = Predictor({**tiny_payload("coarse"), "notice": "not for real scans"}, marked, device="cpu")
    assert both.notice == "not for real scans" and both.info()["notice"] == "not for real scans"


@pytest.mark.parametrize("output_stride", [1, 2])
def test_stage_probabilities_are_the_whole_volume_softmax_of_the_nets_output(output_stride):
    """The predictor's slab-wise path (softmax by slabs, or upsampling with the softmax) equals the
    softmax of the whole network output, for full- and half-resolution nets."""
    torch.manual_seed(3)
    net = build_network("efficient_context_net", base_channels=4, depth=3, max_channels=16, output_stride=output_stride)
    payload = make_payload("fine", [network_entry(net, [24, 24, 24])], [24, 24, 24], (-325, 325), {})
    model = StageModel.from_payload(payload, "fine", torch.device("cpu"), torch.float32, verify=True)
    volume = torch.from_numpy(np.random.default_rng(0).normal(0, 200, (30, 20, 26)).astype(np.float32))
    got = model.probabilities(volume, Stopwatch(torch.device("cpu")))
    image = normalize_hu(resize_image(volume, (24, 24, 24)), (-325, 325))[None, None]
    with torch.inference_mode():
        expected = torch.softmax(model.nets[0](image)[0], dim=0)
    assert got.shape == (NUM_CLASSES, 24, 24, 24)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_body_region_option_segments_the_trunk_alone(tmp_path):
    from segcore.volumes.body_region import AIR_HU, body_mask, keep_body
    from segcore.volumes.geometry import Geometry
    from tests.segcore.volumes.test_body_region import SPACING, torso_with_arms_and_table

    case = torso_with_arms_and_table()
    image = case["image"]
    geometry = Geometry(size=image.shape[::-1], spacing=SPACING[::-1], origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # fmt: skip
    weights = write_tiny_weights(tmp_path / "weights")
    masked_by_hand = Predictor.from_weights(weights, device="cpu")
    with_body = Predictor.from_weights(weights, device="cpu", body_region=True)
    assert with_body.info()["body_region"] and not masked_by_hand.info()["body_region"]
    canonical, reorientation = to_canonical(image, geometry)
    trunk_only = keep_body(canonical, body_mask(canonical, reorientation.canonical.spacing_zyx))
    assert (trunk_only == AIR_HU).sum() > (canonical == AIR_HU).sum()  # the arms and the table went
    expected = masked_by_hand.predict(np.ascontiguousarray(reorientation.undo(trunk_only)), geometry)
    found = with_body.predict(image, geometry)
    np.testing.assert_array_equal(found.labels, expected.labels)
    assert "body_region" in found.timings


def test_segcore_weights_names_the_default_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCORE_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"no model weights in .*nowhere .*SEGCORE_WEIGHTS"):
        Predictor.from_weights(device="cpu")
    folder = write_tiny_weights(tmp_path / "ours")
    monkeypatch.setenv("SEGCORE_WEIGHTS", str(folder))
    loaded = Predictor.from_weights(device="cpu").info()
    assert loaded["coarse"]["path"] == str(folder / "coarse.pt") and loaded["fine"]["path"] == str(folder / "fine.pt")
    # A folder named explicitly wins over the setting.
    assert Predictor.from_weights(DEFAULT_WEIGHTS_DIR, device="cpu").info()["fine"]["path"] == str(
        DEFAULT_WEIGHTS_DIR / "fine.pt"
    )
