"""Synthetic task-grouping problems for tests and ``python -m mtlbench bench grouping``.

A generative model of per-task losses (ours, not from a paper; it mimics what Standley et
al. observe: some tasks help each other, others interfere, and capacity runs out as groups
grow):
- tasks fall into latent clusters of 2..6; task i has a base (single-task) loss b_i ~ U(0.5, 1.5);
- affinity A[i, j] ~ U(0.03, 0.2) inside a cluster, U(-0.15, 0.03) across (asymmetric);
- in a group G (|G| >= 2), task i scores
  b_i * (1 - mean_{j in G, j != i} A[i, j] + 0.004 * (|G| - 1)^2 + eps),
  eps ~ N(0, 0.02) drawn from a generator seeded by (seed, G, i): a higher-order effect that
  pairwise scores do not predict;
- a half-width single scores b_i * (1 + h_i), h_i ~ U(0.03, 0.15), at cost 0.5.
"""
from __future__ import annotations

import itertools
from typing import Iterable, List, Sequence

import numpy as np

from mtlbench.grouping.selection import ScoreTable


class SyntheticTasks:
    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng([seed, n, 7])
        self.n, self.seed = int(n), int(seed)
        self.tasks = [f"t{i}" for i in range(self.n)]
        sizes, left = [], self.n
        while left > 0:
            s = int(min(left, rng.integers(2, 7)))
            sizes.append(s)
            left -= s
        self.cluster = np.repeat(np.arange(len(sizes)), sizes)[rng.permutation(self.n)]
        same = self.cluster[:, None] == self.cluster[None, :]
        self.A = np.where(same, rng.uniform(0.03, 0.2, (n, n)), rng.uniform(-0.15, 0.03, (n, n)))
        np.fill_diagonal(self.A, 0.0)
        self.base = rng.uniform(0.5, 1.5, n)
        self.half = rng.uniform(0.03, 0.15, n)

    def scores(self, group: Sequence[int]) -> np.ndarray:
        """Loss of each task of ``group`` in the network trained on it (in group order)."""
        g = sorted(int(i) for i in group)
        if len(g) == 1:
            return self.base[g].copy()
        k = len(g)
        eps = np.random.default_rng([self.seed, 11, *g]).normal(0.0, 0.02, k)
        aff = self.A[np.ix_(g, g)].sum(axis=1) / (k - 1)
        return self.base[g] * (1.0 - aff + 0.004 * (k - 1) ** 2 + eps)

    def pair_matrix(self) -> np.ndarray:
        """pair[i, j] = loss of i in the network on {i, j}; diagonal = single-task loss."""
        P = np.diag(self.base.astype(float))
        for i, j in itertools.combinations(range(self.n), 2):
            P[i, j], P[j, i] = self.scores((i, j))
        return P

    def table(self, groups: Iterable[Sequence[int]], halves: bool = True) -> ScoreTable:
        groups = [tuple(sorted(int(i) for i in g)) for g in groups]
        rows, names, cost = [], [], []
        if halves:
            for i in range(self.n):
                r = np.full(self.n, np.nan)
                r[i] = self.base[i] * (1.0 + self.half[i])
                rows.append(r)
                names.append(f"{self.tasks[i]}_half")
                cost.append(0.5)
        for g in groups:
            r = np.full(self.n, np.nan)
            r[list(g)] = self.scores(g)
            rows.append(r)
            names.append("+".join(self.tasks[i] for i in g))
            cost.append(1.0)
        return ScoreTable(names, np.array(cost), list(self.tasks), np.array(rows))

    def all_groups(self) -> List[tuple]:
        return [g for r in range(1, self.n + 1) for g in itertools.combinations(range(self.n), r)]


def random_table(n_rows: int, n_tasks: int, seed: int = 0, half_fraction: float = 0.3) -> ScoreTable:
    """An unstructured random table: each row a random non-empty task subset, cost 1 (or 0.5 for
    a fraction of single-task rows), uniform scores; every task appears in some row."""
    rng = np.random.default_rng(seed)
    rows, cost = [], []
    for k in range(n_rows):
        r = np.full(n_tasks, np.nan)
        if k < n_tasks:  # one single-task row per task keeps every task covered
            r[k] = rng.uniform(0.5, 1.5)
            cost.append(0.5 if rng.random() < half_fraction else 1.0)
        else:
            size = int(rng.integers(1, n_tasks + 1))
            idx = rng.choice(n_tasks, size=size, replace=False)
            r[idx] = rng.uniform(0.2, 1.5, size)
            cost.append(1.0)
        rows.append(r)
    return ScoreTable([f"net{k}" for k in range(n_rows)], np.array(cost), [f"t{i}" for i in range(n_tasks)],
                      np.array(rows))
