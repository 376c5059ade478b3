"""segcore.inference.postprocess: the slab-wise restore, component clean-up and organ statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from segcore.inference import postprocess
from segcore.inference.postprocess import (
    LARGEST_ONLY,
    keep_components,
    organ_statistics,
    resize_argmax,
    source_winners,
)
from segcore.labels import NUM_CLASSES
from segcore.phantom import generate_case
from segcore.volumes.geometry import Geometry


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


def test_resize_argmax_is_dense_where_most_cells_are_in_doubt_and_cell_by_cell_elsewhere(monkeypatch):
    """Noise puts every cell in doubt (the slabs' dense resize); organ blocks leave a few (the cells'
    interpolation); both give the labels of one trilinear resize."""
    calls = []
    for name in ("_resize_argmax_by_slabs", "_interpolate_cells"):
        original = getattr(postprocess, name)
        monkeypatch.setattr(postprocess, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    generator = torch.Generator().manual_seed(2)
    noise = torch.rand((NUM_CLASSES, 16, 18, 20), generator=generator, dtype=torch.float64)
    layout = torch.zeros((16, 18, 20), dtype=torch.long)
    layout[4:12, 6:14, 2:10], layout[2:8, 0:6, 12:18] = 3, 7
    blocks = torch.softmax(6.0 * F.one_hot(layout, NUM_CLASSES).permute(3, 0, 1, 2).double() + noise, 0)
    for probabilities, path in ((noise, "_resize_argmax_by_slabs"), (blocks, "_interpolate_cells")):
        calls.clear()
        expected = F.interpolate(probabilities[None], size=(37, 29, 45), mode="trilinear", align_corners=False)
        assert np.array_equal(resize_argmax(probabilities, (37, 29, 45)), expected[0].argmax(0).numpy())
        assert calls == [path]


def test_keep_largest_components_per_organ():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 3  # 8 voxels
    labels[4, 4, 4] = 3  # stray voxel of the same organ
    labels[3, 3, 3] = 5  # a lone organ keeps its only component
    labels[2, 2, 2] = 3  # touches the big block by a corner only: 26-connected, kept
    cleaned = keep_components(labels, LARGEST_ONLY)
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
@pytest.mark.parametrize(
    "coverage, slab_voxels",
    [(0.0, 1 << 24), (0.0, 1), (0.0, 3 * 24 * 28), (math.inf, 1 << 24)],
    ids=["one_pass", "one_pass_slices", "one_pass_slabs", "per_box"],
)
@pytest.mark.parametrize("make_labels", [fragmented_labels, compact_labels])
def test_component_cleanup_matches_per_organ_labelling(monkeypatch, coverage, slab_voxels, make_labels, shares):
    """Both ways of labelling, the one-pass way over one slab or joined across many, give scipy's
    per-organ result, whichever way the organs lie."""
    monkeypatch.setattr(postprocess, "_PER_BOX_MAX_COVERAGE", coverage)
    monkeypatch.setattr(postprocess, "_SLAB_VOXELS", slab_voxels)
    for seed in range(2):
        labels = make_labels(seed)
        cleaned = postprocess.keep_components(labels, shares)
        assert cleaned.dtype == np.uint8 and (cleaned != labels).any()
        assert np.array_equal(cleaned, components_one_organ_at_a_time(labels, shares))


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


def test_largest_component_of_an_organ_one_voxel_thin_in_two_axes():
    # An organ whose box is 3×1×1 with a gap: cc3d's binary mode fails on such a box ("maximum
    # length exception"), seen on a phantom cut to its pelvis.
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2, 3, 3] = labels[4, 3, 3] = 5
    labels[5:8, 5:8, 5:8] = 1
    cleaned = keep_components(labels, LARGEST_ONLY)
    assert (cleaned == 5).sum() == 1 and cleaned[2, 3, 3] == 5 and (cleaned == 1).sum() == 27


def test_organ_statistics_within_a_box_equal_those_of_the_whole_map():
    labels = np.zeros((10, 12, 14), np.uint8)
    labels[2:5, 3:9, 4:6] = 1
    labels[6, 7, 8:12] = 11
    image = np.arange(labels.size, dtype=np.int16).reshape(labels.shape)
    geometry = Geometry(
        size=(14, 12, 10), spacing=(1.0, 2.0, 0.5), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel())
    )
    whole = organ_statistics(labels, image, geometry)
    assert organ_statistics(labels, image, geometry, within=[[3, 13], [2, 10], [1, 8]]) == whole
    assert whole["stomach"]["box_voxels"] == [[8, 12], [7, 8], [6, 7]]


def test_source_winners_take_the_first_class_on_ties_as_argmax():
    probabilities = torch.zeros(4, 2, 1, 2)
    probabilities[1, 0, 0, 0] = probabilities[3, 0, 0, 0] = 0.5  # tie: class 1 wins
    probabilities[2, 0, 0, 1] = 1.0
    probabilities[:, 1] = 0.25  # all four tie: background
    winners = source_winners(probabilities)
    assert winners.dtype == np.uint8
    assert winners.tolist() == [[[1, 2]], [[0, 0]]]


def test_given_winners_are_what_the_restore_starts_from():
    """The caller's winners are used, not recomputed: a deliberately wrong map shows in the output."""
    probabilities = torch.softmax(torch.randn(3, 6, 6, 6, generator=torch.Generator().manual_seed(1)), dim=0)
    uniform = np.full((6, 6, 6), 2, dtype=np.uint8)  # every cell's corners agree: no interpolation
    assert (resize_argmax(probabilities, (12, 12, 12), winners=uniform) == 2).all()
    assert not (resize_argmax(probabilities, (12, 12, 12)) == 2).all()
