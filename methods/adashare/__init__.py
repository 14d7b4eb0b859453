"""AdaShare (Sun et al., NeurIPS 2020): the ``adashare`` architecture (``arch.py``), the
``adashare`` procedure (``procedure.py``) and what a run reports (``outputs.py``)."""
from mtlbench.methods.adashare import arch, procedure  # noqa: F401  (registrations)
