"""Candidate task groups from pairwise scores, without enumerating subsets (the scalable path
of the task-grouping issue; the pairwise-affinity idea follows Standley et al.'s HOA and
Fifty et al., NeurIPS 2021 (TAG), which also grow groups from pairwise affinities).

``pair[i, j]`` = score of task i in the network trained on {i, j} (lower is better);
``pair[i, i]`` = task i's single-task score (the reference). The gain of i from j is
``pair[i, i] - pair[i, j]``, in the units of the objective; a group's estimated gain is the
HOA estimate sum_{i in G} mean_{j in G, j != i} gain[i, j] (nan pairs count as no group).

Generated: every single task, every pair, and groups of 3..max_size grown greedily (each
step adds the task that most raises the estimated gain) from every task and from random
starting pairs; kept first: every single task and the largest group grown from each task
(so a cover by about T / max_size groups exists), then the rest ranked by estimated gain
within each size and taken round-robin over sizes, so every size is represented. Deterministic for a given ``seed``.
"""
from __future__ import annotations

from typing import Dict, List, Set, Tuple

import numpy as np


def _gain(pair: np.ndarray) -> np.ndarray:
    pair = np.asarray(pair, dtype=float)
    T = pair.shape[0]
    if pair.shape != (T, T):
        raise ValueError(f"candidate_groups: pair must be a square [T, T] array (got {pair.shape})")
    single = np.diag(pair).copy()
    off = pair.copy()
    np.fill_diagonal(off, np.nan)
    missing = np.isnan(single)
    if missing.any():  # no single score: use the row's worst pair score as the reference
        single[missing] = np.nanmax(np.where(np.isnan(off), -np.inf, off), axis=1)[missing]
    gain = single[:, None] - off
    gain[np.isnan(gain)] = -1e6 * (np.nanmax(np.abs(gain)) + 1.0) if np.isfinite(gain).any() else -1e6
    np.fill_diagonal(gain, 0.0)
    return gain


def _estimate(gain: np.ndarray, group: Tuple[int, ...]) -> float:
    g = list(group)
    if len(g) < 2:
        return 0.0
    return float(gain[np.ix_(g, g)].sum() / (len(g) - 1))


def _grow(gain: np.ndarray, start: List[int], max_size: int, out: Set[tuple]) -> tuple:
    """Grow ``start`` greedily up to ``max_size``, adding every intermediate group to
    ``out``; returns the largest group reached."""
    T = gain.shape[0]
    G = list(start)
    s_in = gain[:, G].sum(axis=1)            # s_in[i] = sum_{j in G} gain[i, j]
    while len(G) < max_size:
        k = len(G)
        inside = s_in[G].sum()
        # estimated gain of G + {j}: (sum_{i in G} (s_in[i] + gain[i, j]) + s_in[j]) / k
        est = (inside + gain[G, :].sum(axis=0) + s_in) / k
        est[G] = -np.inf
        j = int(np.argmax(est))
        if not np.isfinite(est[j]):
            break
        G.append(j)
        s_in += gain[:, j]
        out.add(tuple(sorted(G)))
        if len(G) >= T:
            break
    return tuple(sorted(G))


def generate(pair: np.ndarray, max_size: int, n_candidates: int, seed: int = 0) -> List[tuple]:
    gain = _gain(pair)
    T = gain.shape[0]
    max_size = max(1, min(int(max_size), T))
    n_candidates = int(n_candidates)
    if n_candidates < T:
        raise ValueError(f"candidate_groups: n_candidates ({n_candidates}) must be >= the number of tasks ({T}) "
                         f"so every single-task network is a candidate")
    singles = [(i,) for i in range(T)]
    groups: Set[tuple] = set()
    own: List[tuple] = []   # the largest group grown from each task: every task is in one
    if max_size >= 2:
        iu, ju = np.triu_indices(T, 1)
        groups.update(zip(iu.tolist(), ju.tolist()))
    if max_size >= 3:
        rng = np.random.default_rng(seed)
        for i in range(T):
            own.append(_grow(gain, [i], max_size, groups))
        sym = gain + gain.T
        iu, ju = np.triu_indices(T, 1)
        order = np.argsort(-sym[iu, ju])
        n_top = min(len(order), 4 * T)
        starts = order[:n_top]
        if len(order) > n_top:
            starts = np.concatenate([starts, rng.choice(order[n_top:], size=min(T, len(order) - n_top),
                                                        replace=False)])
        for p in starts:
            _grow(gain, [int(iu[p]), int(ju[p])], max_size, groups)
    by_size: Dict[int, List[tuple]] = {}
    for g in groups:
        by_size.setdefault(len(g), []).append(g)
    for size in by_size:
        by_size[size].sort(key=lambda g: (-_estimate(gain, g), g))
    chosen: List[tuple] = list(singles)
    # first the group grown from each task, so a cover of about T / max_size networks exists
    # however the gains concentrate on a few tasks; then the best of every size, round-robin
    for g in dict.fromkeys(own):
        if len(chosen) < n_candidates and len(g) > 1:
            chosen.append(g)
    taken = set(chosen)
    queues = [[g for g in by_size[s] if g not in taken] for s in sorted(by_size)]
    pos = [0] * len(queues)
    while len(chosen) < n_candidates and any(p < len(q) for p, q in zip(pos, queues)):
        for qi, q in enumerate(queues):
            if pos[qi] < len(q) and len(chosen) < n_candidates:
                chosen.append(q[pos[qi]])
                pos[qi] += 1
    return chosen
