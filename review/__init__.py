"""The review station: a local web page over a ``predict.sh`` output folder (``review.sh``), where each
case is accepted or corrected; and the export of a reviewed batch as training data (``review.export``)."""
