"""Evaluation by the FLARE22 protocol: per-organ DSC and NSD (:mod:`.metrics`) and the scoring of
folders of predictions (:mod:`.folders`; ``python -m segcore.evaluate``)."""

from segcore.evaluate.folders import CaseScores, Evaluation, evaluate_folders, label_files, main, score_files, summary

__all__ = ["CaseScores", "Evaluation", "evaluate_folders", "label_files", "main", "score_files", "summary"]
