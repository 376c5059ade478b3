"""The two-stage predictor: input grid kept, orientation-equivariant, empty coarse stage, building blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from segcore import postprocess
from segcore import predictor as predictor_module
from segcore.boxes import box_to_original, expand_box, scale_box
from segcore.geometry import Geometry, canonical_reorientation, to_canonical
from segcore.io import read_volume, write_volume
from segcore.labels import NUM_CLASSES
from segcore.phantom import generate_case
from segcore.phantom.scanner import stored_geometry
from segcore.postprocess import keep_largest_components, organ_statistics, resize_argmax
from segcore.predictor import CoarseLocator, Predictor, resolve_precision
from tests.tiny_checkpoints import tiny_payload, write_tiny_weights

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
    box = sub_box_predictor.coarse_box(canonical_image, spacing)
    assert box == expand_box(scale_box(SubBoxCoarseNet.region, (16,) * 3, canonical_image.shape), 20.0, spacing,
                             canonical_image.shape)  # fmt: skip


@pytest.mark.parametrize("size", [(13, 20, 5), (7, 9, 11), (3, 30, 31)])
def test_resize_argmax_in_slabs_equals_one_trilinear_resize(size):
    probabilities = torch.rand((NUM_CLASSES, 7, 9, 11), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = F.interpolate(probabilities[None], size=size, mode="trilinear", align_corners=False)[0].argmax(0)
    for chunk in (1, NUM_CLASSES * size[1] * size[2] * 2, 1 << 25):
        labels = resize_argmax(probabilities, size, chunk_elements=chunk)
        assert labels.dtype == np.uint8 and np.array_equal(labels, expected.numpy())


@pytest.mark.parametrize("size", [(40, 20, 25), (9, 30, 31)])
def test_resize_argmax_with_organs_in_some_slices_only_equals_one_trilinear_resize(size):
    # Organ-like probabilities: each class peaks in its own band of slices and is near 0 elsewhere,
    # so most slabs resize a few classes only; the labels must still equal the dense resize.
    generator = torch.Generator().manual_seed(1)
    layout = torch.zeros((12, 9, 11), dtype=torch.long)
    for organ in range(1, NUM_CLASSES):
        band = slice(organ - 1, organ + 1)
        layout[band, organ % 9 : organ % 9 + 3, organ % 11 : organ % 11 + 4] = organ
    logits = 8.0 * F.one_hot(layout, NUM_CLASSES).permute(3, 0, 1, 2).double()
    probabilities = torch.softmax(logits + torch.randn(logits.shape, generator=generator, dtype=torch.float64), 0)
    expected = F.interpolate(probabilities[None], size=size, mode="trilinear", align_corners=False)[0].argmax(0)
    for chunk in (1, 1 << 25):
        assert np.array_equal(resize_argmax(probabilities, size, chunk_elements=chunk), expected.numpy())


def test_keep_largest_components_per_organ():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 3  # 8 voxels
    labels[4, 4, 4] = 3  # stray voxel of the same organ
    labels[3, 3, 3] = 5  # a lone organ keeps its only component
    labels[2, 2, 2] = 3  # touches the big block by a corner only: 26-connected, kept
    cleaned = keep_largest_components(labels)
    assert cleaned[4, 4, 4] == 0 and cleaned[3, 3, 3] == 5 and cleaned[2, 2, 2] == 3
    assert (cleaned[0:2, 0:2, 0:2] == 3).all() and cleaned.dtype == np.uint8


def components_one_organ_at_a_time(labels: np.ndarray, shares=postprocess.LARGEST_ONLY) -> np.ndarray:
    """Reference: scipy's 26-connected labelling of each organ's mask on its own."""
    cleaned = labels.copy()
    for organ in np.unique(labels[labels > 0]):
        components, _ = ndimage.label(labels == organ, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        kept = sizes >= shares[organ] * sizes.max() if shares[organ] < 1 else np.arange(sizes.size) == sizes.argmax()
        cleaned[(components > 0) & ~kept[components]] = 0
    return cleaned


def test_organs_a_field_of_view_splits_keep_their_sizeable_pieces():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[0:3, 0:3, 0:3] = 12  # duodenum, 27 voxels
    labels[6:8, 0:2, 0:2] = 12  # its other part, 8 voxels (30 %): kept
    labels[11, 11, 0] = 12  # a one-voxel fragment (4 %): removed
    labels[0:3, 6:9, 6:9] = 1  # liver, 27 voxels
    labels[6:8, 6:8, 6:8] = 1  # a second liver piece: a false positive whatever its size
    cleaned = postprocess.keep_components(labels)
    assert (cleaned == 12).sum() == 35 and cleaned[11, 11, 0] == 0
    assert (cleaned == 1).sum() == 27


def fragmented_labels(seed: int) -> np.ndarray:
    """Every organ scattered in touching pieces with equal-size ties, as a poor network gives."""
    generator = torch.Generator().manual_seed(seed)
    fields = torch.rand((1, NUM_CLASSES, 5, 6, 7), generator=generator)
    smooth = F.interpolate(fields, size=(20, 24, 28), mode="trilinear").argmax(1)[0].to(torch.uint8).numpy()
    speckle = torch.randint(0, NUM_CLASSES, smooth.shape, generator=generator, dtype=torch.uint8).numpy()
    return np.where(np.random.default_rng(seed).random(smooth.shape) < 0.05, speckle, smooth)


def compact_labels(seed: int) -> np.ndarray:
    """Phantom organs (one compact block each) plus a few stray voxels, as a trained network gives."""
    labels = generate_case(seed, "small").label.copy()
    rng = np.random.default_rng(seed)
    strays = tuple(rng.integers(0, size, 40) for size in labels.shape)
    labels[strays] = rng.integers(1, NUM_CLASSES, 40)
    return labels


@pytest.mark.parametrize("shares", [postprocess.LARGEST_ONLY, postprocess.COMPONENT_SHARES], ids=["largest", "shares"])
@pytest.mark.parametrize("coverage", [0.0, math.inf], ids=["one_pass", "per_box"])
@pytest.mark.parametrize("make_labels", [fragmented_labels, compact_labels])
def test_component_cleanup_matches_per_organ_labelling(monkeypatch, coverage, make_labels, shares):
    """Both ways of labelling give scipy's per-organ result, whichever way the organs lie."""
    monkeypatch.setattr(postprocess, "_PER_BOX_MAX_COVERAGE", coverage)
    for seed in range(2):
        labels = make_labels(seed)
        cleaned = postprocess.keep_components(labels, shares)
        assert cleaned.dtype == np.uint8 and (cleaned != labels).any()
        assert np.array_equal(cleaned, components_one_organ_at_a_time(labels, shares))


def test_scale_box_covers_the_same_extent():
    assert scale_box(((4, 12), (0, 16), (15, 16)), (16, 16, 16), (30, 101, 122)) == ((7, 23), (0, 101), (114, 122))


def test_organ_statistics_volume_mean_and_box():
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 2:4, 0:5] = 1
    labels[3, 4, 5] = 13
    image = np.full(labels.shape, -1000, np.int16)
    image[labels == 1] = 60
    geometry = Geometry(
        size=(6, 5, 4), spacing=(1.0, 2.0, 5.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel())
    )
    statistics = organ_statistics(labels, image, geometry)
    assert list(statistics) == ["liver", "left_kidney"]
    liver = statistics["liver"]
    assert liver["voxels"] == 20 and liver["volume_ml"] == pytest.approx(20 * 10 / 1000)
    assert liver["mean_hu"] == 60 and liver["box_voxels"] == [[0, 5], [2, 4], [1, 3]]
    assert statistics["left_kidney"]["box_voxels"] == [[5, 6], [4, 5], [3, 4]]


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_on_the_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(predictor_module, "native_bf16", lambda: native)
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


def test_largest_component_of_an_organ_one_voxel_thin_in_two_axes():
    # An organ whose box is 3×1×1 with a gap: cc3d's binary mode fails on such a box ("maximum
    # length exception"), seen on a phantom cut to its pelvis.
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2, 3, 3] = labels[4, 3, 3] = 5
    labels[5:8, 5:8, 5:8] = 1
    cleaned = keep_largest_components(labels)
    assert (cleaned == 5).sum() == 1 and cleaned[2, 3, 3] == 5 and (cleaned == 1).sum() == 27
