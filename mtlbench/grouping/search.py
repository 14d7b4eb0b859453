"""Selection algorithms for ``mtlbench.grouping.selection.select`` (Standley et al., ICML 2020, Sec. 3.4;
their code, tstandley/taskgrouping network_selection/, is an exhaustive C++ search for 5 tasks).

All methods minimise sum_t min_{k in S} scores[k, t] over sets S with cost(S) <= budget
that cover every task (``S_inf[k, t] = inf`` where network k lacks task t). Each returns a
``Selection`` or None when no feasible set exists.

- ``branch_and_bound`` (exact): depth-first over networks in a fixed order; a node includes
  one more network from the rest. Pruned: networks over the remaining budget, networks that
  improve no task, and nodes whose lower bound >= the incumbent. Bound = max of
  (a) sum_t min(best_t, min over affordable remaining networks of S[k, t]) and
  (b) sum_t ref_t - fractional-knapsack(improvements over ref, costs, remaining budget),
  ref_t = current best (or, for an uncovered task, the worst score any network has on it):
  the gain of a set is at most the sum of its networks' single gains, so (b) is valid.
  The incumbent starts from the greedy solution.
- ``brute_force`` (exact, for checking): every set of at most min(N, T) networks (an
  optimal set never needs more networks than tasks), vectorised per set size.
- ``milp_select`` (exact): x_k in {0,1}, y_kt in [0,1] (task t served by k), sum_k y_kt = 1,
  y_kt <= x_k, cost.x <= budget, minimise sum S[k, t] y_kt (scipy.optimize.milp, HiGHS).
- ``greedy_select`` / ``beam_select``: a feasible start (greedy by gain per cost, else the
  cheapest cover from a small integer program), then best-improvement add / swap moves
  (beam: keep the ``width`` best sets per step). Their ``lower_bound`` is the LP relaxation
  of the integer program, so ``total - lower_bound`` bounds the gap to the optimum.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import List, Optional

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from mtlbench.grouping.selection import ScoreTable, Selection, selection_from_rows

EPS = 1e-9


def _prepare(table: ScoreTable, budget: float):
    """Rows affordable on their own; S with inf for missing tasks."""
    rows = np.flatnonzero(table.cost <= budget + EPS)
    S = np.where(table.has[rows], table.scores[rows], np.inf)
    return rows, S, table.cost[rows].astype(float)


# ----------------------------------------------------------------------------- exact
def brute_force(table: ScoreTable, budget: float, chunk: int = 200_000) -> Optional[Selection]:
    rows, S, c = _prepare(table, budget)
    n, T = S.shape
    best_total, best_set = math.inf, None
    for r in range(1, min(n, T) + 1):
        it = itertools.combinations(range(n), r)
        while True:
            flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(it, chunk)), dtype=np.int64)
            if flat.size == 0:
                break
            combos = flat.reshape(-1, r)
            ok = c[combos].sum(axis=1) <= budget + EPS
            combos = combos[ok]
            if len(combos) == 0:
                continue
            tot = S[combos].min(axis=1).sum(axis=1)
            j = int(np.argmin(tot))
            if tot[j] < best_total - EPS:
                best_total, best_set = float(tot[j]), combos[j]
    if best_set is None or not math.isfinite(best_total):
        return None
    return selection_from_rows(table, rows[best_set], "brute")


def _knapsack_gain(gain: np.ndarray, cost: np.ndarray, cap: float) -> float:
    """Fractional knapsack: an upper bound on the total gain of networks within ``cap``."""
    free = cost <= EPS
    total = float(gain[free].sum())
    g, c = gain[~free], cost[~free]
    if g.size == 0:
        return total
    order = np.argsort(-(g / c))
    g, c = g[order], c[order]
    cum = np.cumsum(c)
    full = cum <= cap + EPS
    total += float(g[full].sum())
    k = int(full.sum())
    if k < g.size:
        used = cum[k - 1] if k else 0.0
        total += float(g[k] * max(0.0, cap - used) / c[k])
    return total


def _mck_bound(best: np.ndarray, sub: np.ndarray, cost: np.ndarray, rem: float) -> float:
    """Bound (c): network k's cost is shared by the tasks it serves, so task t served by k
    "weighs" at least c_k / n_k (n_k = tasks k improves). Each task picks one option
    (keep its current best at weight 0, or a network) with total weight <= rem: the LP
    relaxation of this multiple-choice knapsack (convex hulls + steepest slopes) is a lower
    bound on the final total. inf = infeasible."""
    better = sub < best[None, :] - EPS
    n_k = better.sum(axis=1)
    w = cost / np.maximum(n_k, 1)
    base, base_w, segs = 0.0, 0.0, []
    for t in range(sub.shape[1]):
        ks = np.flatnonzero(better[:, t])
        pts = ([(0.0, float(best[t]))] if np.isfinite(best[t]) else []) + list(zip(w[ks].tolist(), sub[ks, t].tolist()))
        if not pts:
            return math.inf
        pts.sort()
        hull = []
        for x, y in pts:  # lower convex hull of the Pareto front (value decreasing in weight)
            if hull and y >= hull[-1][1] - EPS:
                continue
            while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (x - hull[-2][0]) >= \
                    (y - hull[-2][1]) * (hull[-1][0] - hull[-2][0]):
                hull.pop()
            hull.append((x, y))
        base += hull[0][1]
        base_w += hull[0][0]
        segs += [((hull[i][1] - hull[i + 1][1]) / max(hull[i + 1][0] - hull[i][0], 1e-12),
                  hull[i + 1][0] - hull[i][0]) for i in range(len(hull) - 1)]
    cap = rem - base_w
    if cap < -EPS:
        return math.inf
    gain = 0.0
    for slope, dw in sorted(segs, reverse=True):
        if cap <= EPS:
            break
        take = min(dw, cap)
        gain += slope * take
        cap -= take
    return base - gain


def branch_and_bound(table: ScoreTable, budget: float, incumbent: bool = True,
                     max_nodes: Optional[int] = None) -> Optional[Selection]:
    rows, S, c = _prepare(table, budget)
    n, T = S.shape
    if n == 0:
        return None
    finite = np.isfinite(S)
    worst = np.where(finite, S, -np.inf).max(axis=0)       # ref for uncovered tasks
    span = np.where(finite, S, np.inf).min(axis=0)
    value = np.where(finite, worst - S + (worst - span) + 1.0, 0.0).sum(axis=1) / np.maximum(c, 1e-6)
    order = np.argsort(-value, kind="stable")
    S, c, rows = S[order], c[order], rows[order]
    state = {"total": math.inf, "set": None, "nodes": 0}
    if incumbent:
        g = greedy_select(table, budget, lp_bound=False)
        if g is not None:
            state["total"] = g.total
            pos = {r: i for i, r in enumerate(rows)}
            state["set"] = [pos[table.networks.index(x)] for x in g.networks]

    def dfs(start: int, rem: float, best: np.ndarray, chosen: List[int]):
        state["nodes"] += 1
        if max_nodes is not None and state["nodes"] > max_nodes:
            raise _NodeLimit
        covered = np.isfinite(best)
        if covered.all():
            tot = float(best.sum())
            if tot < state["total"] - EPS:
                state["total"], state["set"] = tot, list(chosen)
        idx = np.arange(start, n)
        idx = idx[(c[idx] <= rem + EPS) & (S[idx] < best - EPS).any(axis=1)]
        if idx.size == 0:
            return
        sub = S[idx]
        if _mck_bound(best, sub, c[idx], rem) >= state["total"] - EPS:
            return
        ref = np.where(covered, best, worst)
        # suffix minima over the remaining candidates, for bound (a) at every loop position
        suffix_min = np.minimum.accumulate(sub[::-1], axis=0)[::-1]
        gains = np.maximum(ref[None, :] - sub, 0.0).sum(axis=1)
        for p, k in enumerate(idx):
            lb_a = np.minimum(best, suffix_min[p])
            if not np.isfinite(lb_a).all():
                break
            lb = float(lb_a.sum())
            if lb >= state["total"] - EPS:
                break
            lb_b = float(ref.sum()) - _knapsack_gain(gains[p:], c[idx[p:]], rem)
            if lb_b >= state["total"] - EPS:
                break
            chosen.append(int(k))
            dfs(int(k) + 1, rem - c[k], np.minimum(best, S[k]), chosen)
            chosen.pop()

    try:
        dfs(0, budget, np.full(T, np.inf), [])
        exact = True
    except _NodeLimit:
        exact = False
    if state["set"] is None:
        return None
    sel = selection_from_rows(table, rows[state["set"]], "bnb", info={"nodes": state["nodes"]})
    if not exact:
        sel.method, sel.lower_bound = "bnb-truncated", None
    return sel


class _NodeLimit(Exception):
    pass


def _ilp(table: ScoreTable, budget: float, relax: bool = False, time_limit: Optional[float] = None):
    rows, S, c = _prepare(table, budget)
    n, T = S.shape
    kk, tt = np.nonzero(np.isfinite(S))
    m = kk.size
    obj = np.concatenate([np.zeros(n), S[kk, tt]])
    nv = n + m
    # each task served once: sum_k y_kt = 1
    A1 = sparse.csr_matrix((np.ones(m), (tt, n + np.arange(m))), shape=(T, nv))
    # y_kt - x_k <= 0
    A2 = sparse.csr_matrix((np.concatenate([np.ones(m), -np.ones(m)]),
                            (np.concatenate([np.arange(m), np.arange(m)]), np.concatenate([n + np.arange(m), kk]))),
                           shape=(m, nv))
    A3 = sparse.csr_matrix(np.concatenate([c, np.zeros(m)])[None, :])
    cons = [LinearConstraint(A1, 1, 1), LinearConstraint(A2, -np.inf, 0), LinearConstraint(A3, -np.inf, budget + EPS)]
    integrality = np.concatenate([np.ones(n), np.zeros(m)]) if not relax else np.zeros(nv)
    opts = {"disp": False, "mip_rel_gap": 0.0}  # exact, not HiGHS's default 1e-4 gap
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    res = milp(obj, constraints=cons, integrality=integrality, bounds=Bounds(0, 1), options=opts)
    return rows, n, res


def milp_select(table: ScoreTable, budget: float, time_limit: Optional[float] = None) -> Optional[Selection]:
    t0 = time.perf_counter()
    rows, n, res = _ilp(table, budget, time_limit=time_limit)
    if res.x is None:
        return None
    chosen = rows[np.flatnonzero(res.x[:n] > 0.5)]
    sel = selection_from_rows(table, chosen, "milp", info={"status": int(res.status),
                                                             "time_s": time.perf_counter() - t0})
    if res.status != 0:  # stopped at the time limit: feasible, with HiGHS's dual bound
        sel.method = "milp-timelimit"
        bound = getattr(res, "mip_dual_bound", None)
        sel.lower_bound = float(bound) if bound is not None and np.isfinite(bound) else None
    return sel


def lp_lower_bound(table: ScoreTable, budget: float) -> Optional[float]:
    """The LP relaxation of the integer program: a lower bound on the optimum (None: infeasible)."""
    _, _, res = _ilp(table, budget, relax=True)
    return float(res.fun) if res.x is not None else None


def min_cover_cost(table: ScoreTable) -> float:
    """Cost of the cheapest set of networks that covers every task (weighted set cover)."""
    H = table.has.T.astype(float)
    res = milp(table.cost, constraints=[LinearConstraint(sparse.csr_matrix(H), 1, np.inf)],
               integrality=np.ones(len(table.networks)), bounds=Bounds(0, 1), options={"disp": False})
    return float(res.fun) if res.x is not None else math.inf


def _cheapest_cover(S: np.ndarray, c: np.ndarray, budget: float) -> Optional[List[int]]:
    H = np.isfinite(S).T.astype(float)
    res = milp(c, constraints=[LinearConstraint(sparse.csr_matrix(H), 1, np.inf)],
               integrality=np.ones(len(c)), bounds=Bounds(0, 1), options={"disp": False})
    if res.x is None or res.fun > budget + EPS:
        return None
    return list(np.flatnonzero(res.x > 0.5))


# ----------------------------------------------------------------------------- heuristics
def _greedy_start(S: np.ndarray, c: np.ndarray, budget: float) -> Optional[List[int]]:
    finite = np.isfinite(S)
    worst = np.where(finite, S, -np.inf).max(axis=0)
    low = np.where(finite, S, np.inf).min(axis=0)
    penal = worst + (worst - low) + 1.0     # an uncovered task counts as worse than any network
    best, rem, chosen = penal.copy(), budget, []
    covered = np.zeros(S.shape[1], dtype=bool)
    while True:
        ok = c <= rem + EPS
        gain = np.where(finite, np.maximum(best[None, :] - S, 0.0), 0.0).sum(axis=1)
        gain[~ok] = 0.0
        gain[chosen] = 0.0
        if gain.max() <= EPS:
            break
        k = int(np.argmax(gain / np.maximum(c, 1e-6)))
        chosen.append(k)
        rem -= c[k]
        best = np.minimum(best, np.where(finite[k], S[k], np.inf))
        covered |= finite[k]
    return chosen if covered.all() else None


def _improve(S: np.ndarray, c: np.ndarray, budget: float, starts: List[List[int]], width: int,
             max_steps: int = 10_000) -> List[int]:
    """Best-improvement add / swap moves; keeps the ``width`` best sets per step."""
    def total(s):
        return float(S[s].min(axis=0).sum())

    beam = [(total(s), tuple(sorted(s))) for s in starts]
    best = min(beam)
    seen = {b[1] for b in beam}
    for _ in range(max_steps):
        moves = []
        for tot, s in beam:
            s = list(s)
            rem = budget - c[s].sum()
            drops = [None] + list(range(len(s)))
            for d in drops:
                keep = s if d is None else s[:d] + s[d + 1:]
                base = S[keep].min(axis=0) if keep else np.full(S.shape[1], np.inf)
                cap = rem + (0.0 if d is None else c[s[d]])
                cand = np.flatnonzero(c <= cap + EPS)
                cand = cand[~np.isin(cand, s)]
                if cand.size == 0:
                    continue
                new = np.minimum(base[None, :], S[cand]).sum(axis=1)
                good = np.flatnonzero(new < tot - EPS)
                if good.size == 0:
                    continue
                top = good[np.argsort(new[good])[:width]]
                moves += [(float(new[j]), tuple(sorted(keep + [int(cand[j])]))) for j in top]
        moves = [m for m in sorted(moves) if m[1] not in seen]
        nxt = []
        for m in moves:
            if len(nxt) == width:
                break
            if m[1] not in (x[1] for x in nxt):
                nxt.append(m)
        if not nxt:
            break
        seen.update(m[1] for m in nxt)
        beam = nxt
        best = min(best, beam[0])
    return list(best[1])


def _heuristic(table: ScoreTable, budget: float, width: int, name: str, lp_bound: bool) -> Optional[Selection]:
    t0 = time.perf_counter()
    rows, S, c = _prepare(table, budget)
    if rows.size == 0:
        return None
    starts = [s for s in (_greedy_start(S, c, budget),) if s is not None]
    if not starts:
        cover = _cheapest_cover(S, c, budget)
        if cover is None:
            return None
        starts = [cover]
    chosen = _improve(S, c, budget, starts, width)
    lb = lp_lower_bound(table, budget) if lp_bound else None
    return selection_from_rows(table, rows[chosen], name, lower_bound=lb,
                               info={"time_s": time.perf_counter() - t0, "width": width})


def greedy_select(table: ScoreTable, budget: float, lp_bound: bool = True) -> Optional[Selection]:
    return _heuristic(table, budget, 1, "greedy", lp_bound)


def beam_select(table: ScoreTable, budget: float, width: int = 4, lp_bound: bool = True) -> Optional[Selection]:
    return _heuristic(table, budget, int(width), "beam", lp_bound)
