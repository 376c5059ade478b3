"""HTTP service for the two-stage predictor: POST a CT to ``/segment``, get the labels back."""
