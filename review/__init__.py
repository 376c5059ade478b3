"""The review station: a local, read-only web page over a ``predict.sh`` output folder (``review.sh``)."""
