"""coarse_seg: the coarse stage, a residual 3-D U-Net on the whole scan at low resolution."""
