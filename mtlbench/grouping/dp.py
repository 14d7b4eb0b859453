"""Exact selection by dynamic programming over task subsets, for ``mtlbench.grouping.selection.select``
(``method='dp'``, the default for tables of more than 64 rows and at most 12 tasks).

An optimal set of networks partitions the tasks into blocks, each served by one chosen
network that contains it (Standley et al., ICML 2020, objective: sum over tasks of the best
chosen network's score, total cost <= budget). With costs on a grid the budget is an integer
number of units, and the DP below is exact; it costs O(3^n x cost classes).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from mtlbench.grouping.selection import ScoreTable, Selection, selection_from_rows

DP_MAX_TASKS = 12


def cost_unit(cost: np.ndarray) -> Optional[float]:
    """The grid the costs lie on (1, 0.5, 0.25 or 0.1), or None."""
    for u in (1.0, 0.5, 0.25, 0.1):
        q = cost / u
        if np.allclose(q, np.round(q), atol=1e-9):
            return u
    return None


def dp_select(table: ScoreTable, budget: float) -> Optional[Selection]:
    """Exact dynamic program over task subsets (n <= DP_MAX_TASKS, costs on a grid). An optimal
    set partitions the tasks into blocks, each served by one network containing it, so
    F[mask][u] = min over blocks B (holding mask's lowest task) and cost classes c of
    W[B, c] + F[mask - B][u - c], with W[B, c] = min over networks of cost c containing B of
    their summed scores on B; F is "cost at most u", so it is monotone in u. O(3^n * classes)."""
    T = len(table.tasks)
    unit = cost_unit(table.cost)
    if T > DP_MAX_TASKS or unit is None:
        raise ValueError(f"dp needs <= {DP_MAX_TASKS} tasks and costs on a grid (use method=milp)")
    U = int(math.floor(budget / unit + 1e-9))
    units = np.round(table.cost / unit).astype(int)
    classes = sorted(set(units.tolist()))
    ci = {c: i for i, c in enumerate(classes)}
    full = (1 << T) - 1
    W = np.full((full + 1, len(classes)), np.inf)
    arg = np.full((full + 1, len(classes)), -1, dtype=np.int64)
    for k in range(len(table.networks)):
        if units[k] > U:
            continue
        ts = np.flatnonzero(table.has[k])
        masks, sums = np.zeros(1, dtype=np.int64), np.zeros(1)
        for t in ts:  # every subset of the network's tasks, with its summed score
            masks = np.concatenate([masks, masks | (1 << int(t))])
            sums = np.concatenate([sums, sums + table.scores[k, t]])
        masks, sums = masks[1:], sums[1:]
        col = ci[units[k]]
        better = sums < W[masks, col]
        W[masks[better], col] = sums[better]
        arg[masks[better], col] = k
    F = np.full((full + 1, U + 1), np.inf)
    F[0] = 0.0
    live = [(i, c) for i, c in enumerate(classes) if c <= U]
    for mask in range(1, full + 1):
        low = mask & -mask
        rest = mask ^ low
        best = F[mask]
        sub = rest
        while True:
            block = sub | low
            other = mask ^ block
            for i, c in live:
                w = W[block, i]
                if w < math.inf:
                    np.minimum(best[c:], w + F[other, :U + 1 - c], out=best[c:])
            if sub == 0:
                break
            sub = (sub - 1) & rest
    if not math.isfinite(F[full, U]):
        return None
    chosen, mask, u = [], full, U  # backtrack
    while mask:
        low, rest = mask & -mask, mask ^ (mask & -mask)
        sub, found = rest, None
        while found is None:
            block = sub | low
            for i, c in live:
                if c <= u and W[block, i] < math.inf and \
                        abs(W[block, i] + F[mask ^ block, u - c] - F[mask, u]) <= 1e-9 * (1 + abs(F[mask, u])):
                    found = (block, i, c)
                    break
            if found is None:
                if sub == 0:
                    raise RuntimeError("dp backtrack failed")  # pragma: no cover - F is consistent
                sub = (sub - 1) & rest
        block, i, c = found
        chosen.append(int(arg[block, i]))
        mask, u = mask ^ block, u - c
    return selection_from_rows(table, chosen, "dp")
