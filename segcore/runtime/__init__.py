"""Runtime: processes and files: distributed groups (:mod:`.distributed`), case claims shared by
processes (:mod:`.claims`), the memory allocator's settings (:mod:`.allocator`), atomic writes
(:mod:`.files`) and the ``torchrun`` launcher the shell scripts source (``launch.sh``)."""
