from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from segcore.volumes.geometry import canonical_reorientation, to_canonical
from tests.conftest import make_geometry


def signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            for column, (row, sign) in enumerate(zip(perm, signs)):
                matrix[row, column] = sign
            yield matrix


def oblique(matrix: np.ndarray, degrees: float, seed: int) -> np.ndarray:
    rotation = Rotation.from_rotvec(np.random.default_rng(seed).normal(size=3) * np.deg2rad(degrees) / np.sqrt(3))
    return rotation.as_matrix() @ matrix


DIRECTIONS = [pytest.param(m, id=f"perm{i}") for i, m in enumerate(signed_permutations())] + [
    pytest.param(oblique(m, 20, seed=i), id=f"oblique{i}") for i, m in enumerate(list(signed_permutations())[::5])
]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_canonical_keeps_every_voxel_at_its_physical_position(direction):
    geometry = make_geometry((5, 6, 7), spacing=(0.7, 0.9, 2.5), origin=(12.0, -40.0, 100.0), direction=direction)
    array = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    canonical, reorientation = to_canonical(array, geometry)
    target = reorientation.canonical
    assert canonical.shape == target.shape_zyx
    # Each canonical voxel holds the value of the original voxel at the same physical point.
    for value_index in [(0, 0, 0), (4, 5, 6), (2, 3, 1), (1, 0, 5)]:
        z, y, x = value_index
        source_point = geometry.index_to_physical(np.array([x, y, z]))
        hits = np.argwhere(canonical == array[z, y, x])
        assert len(hits) == 1
        cz, cy, cx = hits[0]
        np.testing.assert_allclose(target.index_to_physical(np.array([cx, cy, cz])), source_point, atol=1e-9)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_canonical_direction_is_closest_to_identity_and_undo_is_exact(direction):
    geometry = make_geometry((3, 4, 5), direction=direction)
    array = np.random.default_rng(1).normal(size=(2, 3, 4, 5))  # a leading channel axis
    canonical, reorientation = to_canonical(array, geometry)
    target = reorientation.canonical.direction_matrix
    assert np.all(np.diag(target) > 0.5), target
    assert np.array_equal(reorientation.undo(canonical), array)


def test_axis_aligned_scans_become_exactly_identity():
    for matrix in signed_permutations():
        reorientation = canonical_reorientation(make_geometry((3, 4, 5), direction=matrix))
        assert reorientation.canonical.direction == tuple(np.eye(3).ravel())


def test_left_handed_direction_gets_one_flip():
    reorientation = canonical_reorientation(make_geometry((3, 4, 5), direction=np.diag([1.0, 1.0, -1.0])))
    assert reorientation.axes_zyx == (0, 1, 2)
    assert reorientation.flips_zyx == (True, False, False)
