"""data_prepare: FLARE22-layout data root -> LMDB case store (coarse and fine volumes, splits)."""
