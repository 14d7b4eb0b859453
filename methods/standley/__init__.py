"""Standley et al. (ICML 2020) task grouping: the ``standley`` procedure (``procedure.py``),
its candidate runs (``candidates.py``) and outputs (``outputs.py``)."""
from mtlbench.methods.standley import procedure  # noqa: F401  (registration)
