"""Report plots (matplotlib, Agg backend), each written as PNG and PDF.

* ``delta_vs_params``: Δ (Δ_T or Δ_m) vs #params, error bars = the bootstrap CI of Δ
  (the accuracy / parameter trade-off AdaShare argues about); the baseline sits at Δ = 0.
* ``task_changes``: per task, every method's mean signed relative change vs the baseline
  in % (positive = better, the per-task term of Δ_T) with its bootstrap CI (the y range
  covers every whisker, with a margin).
* ``balancer_weights``: the loss weights λ_k per epoch from ``metrics.jsonl``
  (``balancer_weights``) of the methods whose weights change over training (DWA, UW,
  MGDA, ...): mean over seeds, band = min..max over seeds; integer epoch ticks.
* ``gate_weights``: mixture-of-experts gates' mean weight per expert per epoch
  (``mtlbench.results.plots_gates``).
* ``cd_diagram`` (across datasets): ``scikit_posthocs.critical_difference_diagram`` of the
  mean ranks, bars joining methods whose post-hoc test is not significant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mtlbench.results import plots_gates  # noqa: E402
from mtlbench.results.stats import delta_info  # noqa: E402
from mtlbench.results.store import read_log  # noqa: E402


def _math(symbol: str) -> str:
    """Δ_T -> mathtext $\\Delta_T$ (matplotlib would print the underscore)."""
    return f"$\\Delta_{symbol[-1]}$" if symbol.startswith("Δ_") else symbol


def _save(fig, out: Path, name: str) -> List[Path]:
    """PNG + PDF, each rendered in memory and written atomically (a killed report never
    leaves a truncated image)."""
    import io

    from mtlbench.results.files import atomic_write_bytes

    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    try:
        for path, kw in zip(paths, ({"dpi": 150}, {})):
            buf = io.BytesIO()
            fig.savefig(buf, format=path.suffix[1:], bbox_inches="tight", **kw)
            atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return paths


def _colors(methods) -> Dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def delta_vs_params(a, out: Path) -> List[Path]:
    symbol, _, hib = delta_info(a.opts.delta)
    symbol = _math(symbol)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colors = _colors(a.methods)
    seen: Dict[float, int] = {}
    for m in a.methods:
        d, p = a.deltas[a.opts.delta].get(m), a.cost.loc[m, "params"]
        if d is None or not np.isfinite(d.delta) or not np.isfinite(p):
            continue
        k = seen[round(p, -2)] = seen.get(round(p, -2), -1) + 1
        p = p * 1.04 ** k  # methods with the same #params (balancers on one arch): dodge sideways
        err = None
        if np.isfinite(d.low):
            err = [[max(d.delta - d.low, 0)], [max(d.high - d.delta, 0)]]
        ax.errorbar([p], [d.delta], yerr=err, fmt="o", capsize=4, color=colors[m], label=m)
        if err is None and m != a.opts.baseline:
            m = f"{m} (n={int(a.n[m])}, no CI)"
        ax.annotate(m, (p, d.delta), textcoords="offset points", xytext=(6, 4 if k % 2 == 0 else -11), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.1)
    ax.set_xlabel("#params (log scale)")
    ax.set_ylabel(f"{symbol} (%) vs {a.opts.baseline}, {'higher' if hib else 'lower'} is better")
    ax.set_title(f"{a.runset.dataset}: {symbol} vs parameters ({a.opts.confidence:.0%} bootstrap CI)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, out, "delta_vs_params")


def task_changes(a, out: Path) -> List[Path]:
    others = [m for m in a.methods if m != a.opts.baseline and m in a.deltas["delta_t"]]
    tasks = a.deltas["delta_t"][others[0]].tasks if others else []
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(tasks) * max(1, len(others)) / 2), 4))
    colors = _colors(a.methods)
    width = 0.8 / max(1, len(others))
    x = np.arange(len(tasks))
    reach = [0.0]  # every bar end and whisker end: the y range shows them all, with a margin
    for i, m in enumerate(others):
        d = a.deltas["delta_t"][m]
        vals = np.array([d.per_task[d.tasks.index(t)] if t in d.tasks else np.nan for t in tasks])
        lo = np.array([d.per_task_low[d.tasks.index(t)] if t in d.tasks else np.nan for t in tasks])
        hi = np.array([d.per_task_high[d.tasks.index(t)] if t in d.tasks else np.nan for t in tasks])
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        reach += [v for v in np.concatenate([vals, lo, hi]) if np.isfinite(v)]
        n = int(a.n[m])
        ax.bar(x + (i - (len(others) - 1) / 2) * width, vals, width,
               yerr=np.nan_to_num(err) if np.isfinite(err).any() else None, capsize=3, color=colors[m],
               label=f"{m} (n={n}{', no CI' if n < 2 else ''})")
    low, high = min(reach), max(reach)
    pad = 0.08 * (high - low or 1.0)
    ax.set_ylim(low - pad, high + pad)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, tasks)
    ax.set_ylabel(f"relative change vs {a.opts.baseline} (%), higher is better")
    ax.set_title(f"{a.runset.dataset}: per-task change ({a.opts.confidence:.0%} bootstrap CI)", fontsize=10)
    if others:
        ax.legend(fontsize=8, ncol=min(3, len(others)), loc="upper center", bbox_to_anchor=(0.5, -0.08),
                  frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "task_changes")


def balancer_weights(a, out: Path) -> List[Path]:
    """Only methods whose logged weights change over epochs; nothing is written when none do."""
    series: Dict[str, Dict[str, List[np.ndarray]]] = {}
    for r in a.runset.runs.itertuples():
        f = Path(r.path) / "metrics.jsonl"
        if not f.is_file():
            continue
        rows, problem = read_log(f)
        if problem:  # noted in the report by write_report
            continue
        rows = [x for x in rows if isinstance(x.get("balancer_weights"), dict)]
        if len(rows) < 2:
            continue
        tasks = list(rows[0]["balancer_weights"])
        w = np.array([[float(x["balancer_weights"].get(t, np.nan)) for t in tasks] for x in rows])
        if np.nanmax(np.abs(w - w[0])) < 1e-9:
            continue  # constant weights (equal / static): nothing to show
        for k, t in enumerate(tasks):
            series.setdefault(r.method, {}).setdefault(t, []).append(w[:, k])
    if not series:
        return []
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False, sharey=True)
    for ax, (m, by_task) in zip(axes[0], sorted(series.items())):
        for t, runs in by_task.items():
            n = min(len(x) for x in runs)
            arr = np.vstack([x[:n] for x in runs])
            ep = np.arange(1, n + 1)
            line, = ax.plot(ep, arr.mean(0), label=t)
            if len(arr) > 1:
                ax.fill_between(ep, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.2)
        n = len(next(iter(by_task.values())))
        ax.set_title(f"{m} ({n} seed{'s' if n != 1 else ''})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss weight λ (mean, band: min..max over seeds)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{a.runset.dataset}: balancer weights over training", fontsize=10)
    return _save(fig, out, "balancer_weights")


def write_dataset_plots(a, out: Path) -> List[Path]:
    paths: List[Path] = []
    if a.has_baseline and len(a.methods) > 1:
        paths += delta_vs_params(a, out)
        paths += task_changes(a, out)
    paths += balancer_weights(a, out)
    paths += plots_gates.gate_weights(a, out)
    return paths


def write_cd_diagram(cd, out: Path, alpha: float = 0.05) -> List[Path]:
    """Critical-difference diagram of ``significance.CrossDataset`` (needs a post-hoc matrix)."""
    import pandas as pd
    import scikit_posthocs as sp

    if len(cd.mean_ranks) < 2:
        return []
    sig = cd.posthoc if cd.posthoc is not None and cd.friedman_p < alpha else \
        pd.DataFrame(1.0, index=cd.mean_ranks.index, columns=cd.mean_ranks.index)
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * len(cd.mean_ranks)))
    sp.critical_difference_diagram(cd.mean_ranks, sig, ax=ax, alpha=alpha)
    what = ("Friedman p = %.3g" % cd.friedman_p) if np.isfinite(cd.friedman_p) else "no Friedman test"
    ax.set_title(f"mean rank over {len(cd.scores)} datasets ({what}; bars: not significantly different)",
                 fontsize=9)
    return _save(fig, out, "cd_diagram")
