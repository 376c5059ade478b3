"""Inference: the two-stage predictor (:mod:`.predictor`), the organ-region boxes
(:mod:`.boxes`), post-processing (:mod:`.postprocess`) and the quality verdict
(:mod:`.quality`)."""
