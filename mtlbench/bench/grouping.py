"""``python -m mtlbench bench grouping``: time and optimality gap of task-grouping selection vs
the number of tasks n, on synthetic score tables (``grouping_synth.SyntheticTasks``: latent
task clusters, asymmetric affinities, a capacity penalty and higher-order noise).

Per n and budget (budgets = n/4, n/2, 3n/4 rounded to 0.5, at least 1):
- ``exact``: every non-empty task subset + half-width singles as candidates (2^n - 1 + n
  rows), solved exactly (``select(method='auto')``: branch-and-bound up to 64 rows, else the
  subset dynamic program); only while n <= --max-exact;
- ``bnb`` (while the table has <= 64 rows) and ``milp``: the other exact methods on the same
  table, as a check (gap 0) and for their times;
- ``generated+milp``: the scalable path: groups generated from the pair scores
  (``candidate_groups``, max size 6, 20 n candidates; generation time included) solved
  exactly on those candidates; gap vs ``exact`` where that is feasible;
- ``generated+beam``: the same candidates with the beam heuristic (width 4); gap vs exact
  when feasible, else vs the integer program on the same candidates; ``bound`` = its
  certified LP gap.
Gap = (total - reference) / |reference| in %. Times are per budget (max over budgets).
"""
from __future__ import annotations

import argparse
import time
from typing import List


from mtlbench.grouping.selection import candidate_groups, select
from mtlbench.grouping.synth import SyntheticTasks


def budgets_for(n: int) -> List[float]:
    return sorted({max(1.0, round(f * n * 2) / 2) for f in (0.25, 0.5, 0.75)})


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_n(n: int, seed: int, max_exact: int, width: int) -> List[dict]:
    st = SyntheticTasks(n, seed)
    budgets = budgets_for(n)
    rows = []
    exact = {}
    if n <= max_exact:
        table = st.table(st.all_groups())
        times = []
        for b in budgets:
            sel, dt = _timed(lambda: select(table, b))
            exact[b] = sel.total
            times.append(dt)
        rows.append({"n": n, "candidates": len(table.networks), "method": f"exact ({sel.method})",
                     "time_s": max(times), "gap_pct": 0.0, "vs": "-"})
        for method in (["bnb"] if len(table.networks) <= 64 else []) + ["milp"]:
            times, gaps = [], []
            for b in budgets:
                sel, dt = _timed(lambda: select(table, b, method))
                times.append(dt)
                gaps.append(100 * (sel.total - exact[b]) / abs(exact[b]))
            rows.append({"n": n, "candidates": len(table.networks), "method": method, "time_s": max(times),
                         "gap_pct": max(gaps), "vs": "exact"})
    t0 = time.perf_counter()
    pair = st.pair_matrix()
    groups = candidate_groups(pair, max_size=min(n, 6), n_candidates=20 * n, seed=seed)
    gtable = st.table(groups)
    gen_time = time.perf_counter() - t0
    ref_name = "exact" if exact else "milp on candidates"
    milp_total, times, gaps = {}, [], []
    for b in budgets:
        sel, dt = _timed(lambda: select(gtable, b, "milp"))
        milp_total[b] = sel.total
        times.append(dt + gen_time)
        if exact:
            gaps.append(100 * (sel.total - exact[b]) / abs(exact[b]))
    rows.append({"n": n, "candidates": len(gtable.networks), "method": "generated+milp", "time_s": max(times),
                 "gap_pct": max(gaps) if gaps else 0.0, "vs": "exact" if exact else "itself (exact on candidates)"})
    times, gaps, bounds = [], [], []
    for b in budgets:
        sel, dt = _timed(lambda: select(gtable, b, "beam", width=width))
        times.append(dt + gen_time)
        ref = exact.get(b, milp_total[b])
        gaps.append(100 * (sel.total - ref) / abs(ref))
        bounds.append(100 * (sel.total - sel.lower_bound) / abs(sel.lower_bound))
    rows.append({"n": n, "candidates": len(gtable.networks), "method": f"generated+beam{width}",
                 "time_s": max(times), "gap_pct": max(gaps), "vs": ref_name, "bound_pct": max(bounds)})
    return rows


def main(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlbench bench grouping", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[5, 8, 10, 20, 50, 139],
                   help="numbers of tasks (the default runs in a minute or two: no --full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-exact", type=int, default=10, help="largest n solved exactly over all subsets")
    p.add_argument("--width", type=int, default=4, help="beam width")
    a = p.parse_args(args)
    if any(n < 2 for n in a.n) or a.max_exact > 14:
        print("mtlbench: error: --n values must be >= 2 and --max-exact <= 14 (2^n candidates)")
        return 2
    print(f"task grouping selection on synthetic tables (seed {a.seed}); budgets n/4, n/2, 3n/4; "
          f"time = max per budget (s); gap = max over budgets (%)")
    print(f"{'n':>4} {'candidates':>10} {'method':<18} {'time_s':>8} {'gap_%':>7}  vs / LP bound", flush=True)
    warm = SyntheticTasks(3, 0)  # imports and solver start-up out of the timings
    select(warm.table(warm.all_groups()), 2, "milp")
    all_rows = []
    from mtlbench.bench import progress

    for k, n in enumerate(a.n, 1):
        progress(f"{k}/{len(a.n)}: n = {n} tasks, budgets {budgets_for(n)}")
        for r in bench_n(n, a.seed, a.max_exact, a.width):
            all_rows.append(r)
            extra = f" (certified gap <= {r['bound_pct']:.2f}% from the LP bound)" if "bound_pct" in r else ""
            print(f"{r['n']:>4} {r['candidates']:>10} {r['method']:<18} {r['time_s']:>8.3f} {r['gap_pct']:>7.3f}  "
                  f"{r['vs']}{extra}", flush=True)
    ex = [r for r in all_rows if r["method"].startswith("exact")]
    scal = [r for r in all_rows if r["method"] == "generated+milp"]
    if ex:
        print(f"exact selection, n <= {max(r['n'] for r in ex)}: max {max(r['time_s'] for r in ex):.3f} s per budget "
              f"(target < 1 s)")
    gaps = [r["gap_pct"] for r in scal if r["vs"] == "exact"]
    if gaps:
        print(f"scalable path (generated+milp) vs exact: max gap {max(gaps):.3f}% (target < 1%)")
    big = [r for r in scal if r["n"] == max(a.n)]
    if big:
        print(f"scalable path at n = {big[0]['n']}: {big[0]['time_s']:.2f} s per budget (target < 60 s)")
    return 0
