"""TAG's group selection (Fifty et al., NeurIPS 2021; reference google-research/google-research
``tag/network_selection/TAG_network_selection.ipynb``: ``gen_task_combinations`` and
``select_groups``), in the terms of ``mtlbench.grouping.selection``.

The reference scores task a in a group G (|G| >= 2) as the mean over b in G, b != a, of the
affinity onto a from b, scores a task ALONE -1e6 (so a singleton is never preferred for its
affinity: it only serves a task no chosen group covers), enumerates EVERY non-empty task
subset, and picks at most ``splits`` groups covering all tasks that maximise the mean over
tasks of each task's best group score. Here, with ``pair[i, j]`` = task i's score in a network
shared with j (lower is better, = −affinity onto i from j, ``affinity.grouping_scores``):

* ``singleton="reference"`` (default): a lone task scores ``SINGLETON_PENALTY`` (+1e6, the
  reference's −1e6 in this sign); ``"zero"``: 0, the score of a task that gains nothing
  (mtlbench's earlier rule; with all cross-affinities negative it prefers singletons);
* candidates: every non-empty subset when T <= ``exhaustive_max`` (default 12: 4,095 groups,
  solved exactly by ``select``'s dynamic program), else every singleton plus the groups
  ``candidate_groups`` grows from the pair scores (the scalable path for tens of tasks);
* a group's score on task i is ``hoa_table``'s mean over its pairs {i, j}: the reference's
  normalisation; the objective (sum over tasks of the best chosen group's score, budget =
  number of groups, each costing 1) has the reference's optimum (a mean is a scaled sum).
"""
from __future__ import annotations

import itertools
from typing import List, Sequence, Tuple

import numpy as np

from mtlbench.grouping.selection import ScoreTable, candidate_groups, hoa_table

SINGLETON_RULES = ("reference", "zero")
SINGLETON_PENALTY = 1e6
EXHAUSTIVE_MAX = 12


def tag_candidates(pair: np.ndarray, max_size: int, n_candidates: int, exhaustive_max: int = EXHAUSTIVE_MAX,
                   seed: int = 0) -> List[tuple]:
    """Every non-empty subset of the T tasks when T <= ``exhaustive_max``, else the singletons
    plus ``candidate_groups(pair, max_size, n_candidates)``."""
    T = len(pair)
    if T <= int(exhaustive_max):
        return [g for r in range(1, T + 1) for g in itertools.combinations(range(T), r)]
    groups = [tuple(int(i) for i in g) for g in candidate_groups(pair, max_size=min(max_size, T),
                                                                  n_candidates=n_candidates, seed=seed)]
    return groups + [(i,) for i in range(T) if (i,) not in set(groups)]


def tag_table(names: Sequence[str], pair: np.ndarray, groups: Sequence[tuple],
              singleton: str = "reference") -> ScoreTable:
    """The score table TAG selects on (one row per group, cost 1)."""
    if singleton not in SINGLETON_RULES:
        raise ValueError(f"procedure.singleton must be one of {', '.join(SINGLETON_RULES)} (got {singleton!r})")
    single = np.full(len(names), SINGLETON_PENALTY if singleton == "reference" else 0.0)
    return hoa_table(list(names), single, np.asarray(pair, dtype=float), groups)


def tag_selection_inputs(names: Sequence[str], pair: np.ndarray, max_size: int, n_candidates: int,
                         singleton: str = "reference", exhaustive_max: int = EXHAUSTIVE_MAX,
                         seed: int = 0) -> Tuple[ScoreTable, List[tuple]]:
    """(table, groups) for ``select(table, budget)``."""
    groups = tag_candidates(pair, max_size, n_candidates, exhaustive_max, seed)
    return tag_table(names, pair, groups, singleton), groups


__all__ = ["SINGLETON_RULES", "SINGLETON_PENALTY", "EXHAUSTIVE_MAX", "tag_candidates", "tag_table",
           "tag_selection_inputs"]
