"""Compatibility: the statistics layer lives in ``mtlbench.results.stats``;
``mtlbench.stats.delta_t`` and the other functions keep working."""
from mtlbench.results.stats import *  # noqa: F401,F403
