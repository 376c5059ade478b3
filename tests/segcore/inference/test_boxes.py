"""segcore.inference.boxes: boxes scaled between grids."""

from segcore.inference.boxes import scale_box


def test_scale_box_covers_the_same_extent():
    assert scale_box(((4, 12), (0, 16), (15, 16)), (16, 16, 16), (30, 101, 122)) == ((7, 23), (0, 101), (114, 122))
