"""The default model: ``coarse.pt`` and ``fine.pt`` (see ``MODEL_CARD.md``), shipped as package data.

A package so that the checkpoints are found the same way in the repository and in an installed
copy: :data:`segcore.inference.predictor.DEFAULT_WEIGHTS_DIR` is this package's folder, wherever
the import system finds it. Nothing to import; the folder is the point.
"""
