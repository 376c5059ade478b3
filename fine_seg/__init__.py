"""fine_seg: the fine stage, an efficient anisotropic net on the organ-region crop."""
