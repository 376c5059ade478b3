"""The training engine shared by the coarse and fine stages."""
