"""segcore.volumes.resample: trilinear image resize (the CPU separable path and F.interpolate's) and label resize."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segcore.volumes.resample import (
    _resize_3d_separable,
    resize_image,
    resize_labels,
    softmax_by_slabs,
    upsampled_softmax,
)


def reference(volume: np.ndarray, size) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(volume, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="trilinear", align_corners=False)[0, 0]


def test_a_ramp_is_resampled_at_the_voxel_centres_by_hand():
    # z values 0, 10, 20, 30; halving samples the source at 0.5 and 2.5 (align_corners=False)
    ramp = np.broadcast_to(np.arange(4, dtype=np.int16)[:, None, None] * 10, (4, 3, 2)).copy()
    halved = resize_image(ramp, (2, 3, 2))
    assert halved.dtype == torch.float32 and halved.shape == (2, 3, 2)
    assert halved[:, 0, 0].tolist() == [5.0, 25.0]
    # doubling samples at -0.25 (clamped to 0), 0.25, 0.75, ...: the edge keeps its value
    doubled = resize_image(ramp[:2], (4, 3, 2))
    assert doubled[:, 1, 1].tolist() == [0.0, 2.5, 7.5, 10.0]


@pytest.mark.parametrize(
    "shape, size",
    [((60, 70, 80), (16, 16, 16)), ((20, 30, 25), (48, 40, 64)), ((33, 64, 17), (33, 20, 40)), ((5, 6, 7), (5, 6, 7))],
)
def test_both_cpu_paths_match_f_interpolate_on_any_view(shape, size):
    rng = np.random.default_rng(0)
    volume = rng.integers(-1024, 3000, shape).astype(np.int16)
    expected = reference(volume, size)
    views = {
        "contiguous": volume,
        "flipped": volume[::-1, :, ::-1],
        "permuted and flipped": np.ascontiguousarray(volume.transpose(2, 0, 1)).transpose(1, 2, 0)[:, ::-1],
        "read-only": np.lib.stride_tricks.as_strided(volume, writeable=False),
        "tensor": torch.from_numpy(volume),
    }
    for name, view in views.items():
        truth = expected if name not in ("flipped", "permuted and flipped") else reference(view, size)
        got = resize_image(view, size)
        assert got.shape == size and got.dtype == torch.float32, name
        if view is not views["tensor"]:  # the separable path itself, whatever the shrink
            torch.testing.assert_close(_resize_3d_separable(view, size), got, rtol=0, atol=5e-3, msg=name)
        # the same taps and weights; only float32 rounding differs: a few ulps of values up to 3000
        torch.testing.assert_close(got, truth, rtol=0, atol=5e-3, msg=name)


def test_a_flipped_view_gives_the_flipped_result():
    volume = np.random.default_rng(1).normal(0, 100, (30, 40, 50)).astype(np.float32)
    got = resize_image(volume[::-1, ::-1], (12, 24, 10))
    torch.testing.assert_close(got, reference(volume, (12, 24, 10)).flip(0, 1), rtol=0, atol=2e-3)


def test_labels_are_sampled_not_blended():
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[:4] = 3
    resized = resize_labels(labels, (4, 4, 4))
    assert resized.dtype == torch.uint8 and set(resized.unique().tolist()) == {0, 3}
    assert resized[:2].eq(3).all() and resized[2:].eq(0).all()


@pytest.mark.parametrize(
    "shape, size", [((14, 12, 10, 8), (24, 20, 16)), ((3, 5, 7, 9), (10, 14, 18)), ((4, 9, 6, 6), (9, 6, 6))]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upsampled_softmax_is_the_softmax_of_the_trilinear_resize(shape, size, dtype):
    logits = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    expected = torch.softmax(
        F.interpolate(logits[None].float(), size=size, mode="trilinear", align_corners=False)[0], dim=0
    )
    got = upsampled_softmax(logits, size, slab=3)  # slabs that do not divide the depth
    assert got.dtype == torch.float32 and got.shape == (shape[0], *size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.sum(0), torch.ones(size), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_by_slabs_is_the_whole_tensor_softmax(dtype):
    logits = (torch.randn((14, 11, 6, 5), generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    expected = torch.softmax(logits.float(), dim=0)
    source = logits.clone()
    got = softmax_by_slabs(source, slab=3)  # slabs that do not divide the depth
    assert got.dtype == torch.float32 and got.shape == logits.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # float32 logits are overwritten in place: no second full-size tensor
    assert (got.data_ptr() == source.data_ptr()) == (dtype == torch.float32)
