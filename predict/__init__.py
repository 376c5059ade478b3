"""The batch command: segment every CT of a folder (:mod:`.batch`, run by ``predict.sh``) or the
embedded sample CT (:mod:`.sample`)."""
