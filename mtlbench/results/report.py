"""``python -m mtlbench report``: the results store -> ``<reports_dir>/<dataset>/``.

Per dataset (``write_report``): ``summary.csv`` (machine-readable, numeric: ``n_seeds``,
``params``, ``params_rel``, ``flops``, ``wall_time_s``, ``delta_t`` / ``delta_m`` with
``*_ci_low`` / ``*_ci_high``, ``mean_rank``, ``<task>/<metric>_mean`` / ``_std``),
``significance.csv`` (every (method, metric) test: p, Holm-corrected p, mark),
``table.{md,tex,csv,html}`` (the paper table, see ``tables.py``; ``summary.md`` = table.md)
and the plots of ``plots.py`` (PNG + PDF).

Over several datasets (``write_all``, ``dataset=all`` or no dataset): every dataset's
report, then ``<reports_dir>/all/`` with the datasets x methods Δ matrix, the mean rank,
Friedman + pairwise post-hoc tests (Holm) and the critical-difference diagram.

Statistics come from ``stats`` (Δ, bootstrap CI) and ``significance`` (tests, Holm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from mtlbench.results.protocol import RunSet, collect, datasets_in
from mtlbench.results.significance import check_test, compare_to_baseline, cross_dataset, power_warnings
from mtlbench.results.stats import DeltaCI, bootstrap_delta, column_ranks, delta_info, delta_spec
from mtlbench.results.store import atomic_write_text, iter_runs

FORMATS = ("md", "tex", "csv", "html")


class ReportError(RuntimeError):
    pass


@dataclass
class Options:
    baseline: str = "stl"
    methods: Optional[Sequence[str]] = None
    split: str = "test"
    formats: Sequence[str] = ("md", "tex", "csv", "html")
    test: str = "welch"
    alpha: float = 0.05
    delta: str = "delta_t"
    confidence: float = 0.95
    n_resamples: int = 9999
    posthoc: str = "wilcoxon"
    seed: int = 0
    plots: bool = True
    metrics: Optional[Sequence[str]] = None  # only these metric names (e.g. [rmse]); None = all
    published: Optional[str] = None  # a published table's key (results/published.py): its rows beside the measured

    def check(self) -> "Options":
        check_test(self.test)
        delta_info(self.delta)
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown format '{bad[0]}'; formats: {', '.join(FORMATS)} (e.g. format=[md,tex])")
        if self.published:
            from mtlbench.results import published

            published.load(self.published)  # an unknown key: one line naming the known ones
        if not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise ValueError("alpha and confidence must lie in (0, 1), e.g. alpha=0.05 confidence=0.95")
        return self


@dataclass
class Analysis:
    """Everything a table or a plot of one dataset shows (rows: ``methods``, baseline first)."""
    runset: RunSet
    opts: Options
    methods: List[str]
    n: pd.Series
    means: pd.DataFrame
    stds: pd.DataFrame
    cost: pd.DataFrame                      # params, params_rel, flops, wall_time_s
    deltas: Dict[str, Dict[str, DeltaCI]]   # {delta_t|delta_m: {method: DeltaCI}}
    sig: pd.DataFrame
    ranks: pd.DataFrame
    mean_rank: pd.Series
    notes: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def has_baseline(self) -> bool:
        return self.opts.baseline in self.methods


def _nested(row: pd.Series) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for (task, metric), v in row.items():
        if v is not None and np.isfinite(v):
            out.setdefault(task, {})[metric] = float(v)
    return out


def analyze(runset: RunSet, opts: Options) -> Analysis:
    """Means, stds, Δ with bootstrap CIs, tests vs the baseline, ranks: never raises on partial data."""
    v, base, notes, warns = runset.values, opts.baseline, list(runset.notes), []
    present = list(dict.fromkeys(v.index.get_level_values(0))) if len(v) else []
    methods = ([base] if base in present else []) + sorted(m for m in present if m != base)
    means = v.groupby(level="method").mean().reindex(methods)
    stds = v.groupby(level="method").std(ddof=1).reindex(methods)
    n = v.groupby(level="method").size().reindex(methods)
    cost = runset.runs.groupby("method")[["params", "flops", "wall_time_s"]].mean().reindex(methods)
    cost["params_rel"] = cost["params"] / cost.loc[base, "params"] if base in methods else np.nan
    one = [m for m in methods if n[m] < 2]
    if one:
        notes.append(f"{', '.join(one)}: 1 seed only: no std, no CI, no significance test")
    deltas: Dict[str, Dict[str, DeltaCI]] = {"delta_t": {}, "delta_m": {}}
    hib = runset.higher_is_better
    if base in methods:
        b_nest = _nested(means.loc[base])
        for m in methods:
            spec = delta_spec(_nested(means.loc[m]), b_nest, hib)
            notes += [f"{m}: {w}" for w in spec.notes]
            cols = list(spec.columns)
            xm = v.loc[m][cols].to_numpy(float) if cols else np.zeros((n[m], 0))
            xb = v.loc[base][cols].to_numpy(float) if cols else np.zeros((n[base], 0))
            xm, xb = xm[np.isfinite(xm).all(1)], xb[np.isfinite(xb).all(1)]
            for kind in deltas:
                if m == base:
                    z = np.zeros(len(spec.tasks))
                    deltas[kind][m] = DeltaCI(0.0, math.nan, math.nan, spec.tasks, z, z * np.nan, z * np.nan)
                else:
                    deltas[kind][m] = bootstrap_delta(xm, xb, spec, kind, opts.confidence, opts.n_resamples,
                                                      opts.seed)
    sig = compare_to_baseline(v, base, hib, opts.test, opts.alpha, opts.seed)
    n_cells = int(sig["p"].notna().sum())
    untested = sig[sig["p"].isna() & (sig["n"] >= 2) & (sig["n_base"] >= 2)]
    if len(untested):
        notes.append(f"{len(untested)} (method, metric) cell(s) have no p-value (no variance on either side: "
                     f"{', '.join(f'{r.method} {r.task}/{r.metric}' for r in untested.itertuples())})")
    if base in methods:
        warns += power_warnings([(int(n[m]), int(n[base])) for m in methods if m != base], opts.test,
                                opts.alpha, n_cells)
    directions = [hib.get(t, {}).get(mt, True) for t, mt in means.columns]
    ranks = column_ranks(means, directions) if len(means) else pd.DataFrame()
    mean_rank = ranks.mean(axis=1) if len(ranks.columns) else pd.Series(np.nan, index=methods, dtype=float)
    return Analysis(runset, opts, methods, n, means, stds, cost, deltas, sig, ranks, mean_rank,
                    _merge_notes(notes, methods), warns)


def _merge_notes(notes: List[str], methods: Sequence[str]) -> List[str]:
    """Collapse 'm1: msg', 'm2: msg' into 'm1, m2: msg' (same message for several methods)."""
    grouped: Dict[str, List[str]] = {}
    for note in dict.fromkeys(notes):
        head, sep, rest = note.partition(": ")
        if sep and head in methods:
            grouped.setdefault(rest, []).append(head)
        else:
            grouped.setdefault(note, [])
    return [f"{', '.join(ms)}: {msg}" if ms else msg for msg, ms in grouped.items()]


def summary_frame(a: Analysis) -> pd.DataFrame:
    """The numeric summary.csv: one row per method, baseline first."""
    rows = []
    for m in a.methods:
        row = {"method": m, "n_seeds": int(a.n[m]), "params": float(a.cost.loc[m, "params"]),
               "params_rel": float(a.cost.loc[m, "params_rel"]), "flops": float(a.cost.loc[m, "flops"]),
               "wall_time_s": float(a.cost.loc[m, "wall_time_s"])}
        for kind in ("delta_t", "delta_m"):
            d = a.deltas[kind].get(m)
            row[kind] = d.delta if d else math.nan
            row[f"{kind}_ci_low"] = d.low if d else math.nan
            row[f"{kind}_ci_high"] = d.high if d else math.nan
        row["mean_rank"] = float(a.mean_rank.get(m, math.nan))
        for task, metric in a.means.columns:
            row[f"{task}/{metric}_mean"] = float(a.means.loc[m, (task, metric)])
            row[f"{task}/{metric}_std"] = float(a.stds.loc[m, (task, metric)])
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(results_dir, reports_dir, dataset: str, baseline: str = "stl",
                 methods: Optional[Sequence[str]] = None, split: str = "test",
                 opts: Optional[Options] = None) -> Path:
    """Write one dataset's report; returns its folder. Raises ReportError when there is nothing at all."""
    from mtlbench.results import plots, tables

    opts = (opts or Options(baseline=baseline, methods=methods, split=split)).check()
    known = datasets_in(results_dir)
    if not known:
        raise ReportError(f"no runs under {Path(results_dir).resolve()}: run `python -m mtlbench run` first "
                          f"or point results_dir= at your results store")
    if dataset not in known:
        raise ReportError(f"no runs for dataset '{dataset}' in {results_dir}; datasets with runs: {known}")
    runset = collect(results_dir, dataset, opts.baseline, opts.methods, opts.split, opts.metrics)
    out = Path(reports_dir) / dataset
    out.mkdir(parents=True, exist_ok=True)
    if runset.values.empty:
        text = f"# {dataset}: nothing to compare\n\n" + "".join(f"- {n}\n" for n in runset.notes)
        atomic_write_text(out / "summary.md", text)
        atomic_write_text(out / "table.md", text)
        atomic_write_text(out / "summary.csv", "method,n_seeds,params,delta_t,delta_t_ci_low,delta_t_ci_high\n")
        return out
    a = analyze(runset, opts)
    atomic_write_text(out / "summary.csv", summary_frame(a).to_csv(index=False))
    atomic_write_text(out / "significance.csv", a.sig.to_csv(index=False))
    table = tables.build(a)
    if opts.published:
        from mtlbench.results import published

        table = published.extend(table, a, published.load(opts.published))
    md = tables.to_markdown(table)
    atomic_write_text(out / "summary.md", md)
    writers = {"md": ("table.md", lambda: md), "tex": ("table.tex", lambda: tables.to_latex(table)),
               "csv": ("table.csv", lambda: tables.to_csv(table)), "html": ("table.html", lambda: tables.to_html(table))}
    for f in opts.formats:
        name, render = writers[f]
        atomic_write_text(out / name, render())
    if opts.plots:
        plots.write_dataset_plots(a, out)
    return out


def write_all(results_dir, reports_dir, opts: Options) -> Path:
    """Every dataset's report, then the cross-dataset comparison in ``<reports_dir>/all/``."""
    from mtlbench.results import plots

    opts.check()
    known = datasets_in(results_dir)
    if not known:
        raise ReportError(f"no runs under {Path(results_dir).resolve()}: nothing to report for any dataset; run "
                          f"`python -m mtlbench run` first, point results_dir= at your results store, "
                          f"or pick one with dataset=<name>")
    scores, notes = {}, []
    symbol, _, hib = delta_info(opts.delta)
    for ds in known:
        out = write_report(results_dir, reports_dir, ds, opts=_for_dataset(opts, ds))
        summ = pd.read_csv(out / "summary.csv")
        if opts.delta in summ and summ[opts.delta].notna().any():
            scores[ds] = summ.set_index("method")[opts.delta]
        else:
            notes.append(f"{ds}: no {symbol} (no '{opts.baseline}' baseline runs): left out of the comparison")
    out = Path(reports_dir) / "all"
    out.mkdir(parents=True, exist_ok=True)
    matrix = pd.DataFrame(scores).T
    if opts.methods:
        matrix = matrix[[m for m in matrix.columns if m in set(opts.methods) | {opts.baseline}]]
    cd = cross_dataset(matrix, higher_is_better=hib, posthoc=opts.posthoc, alpha=opts.alpha) if len(matrix) else None
    lines = [f"# Across datasets: {symbol} per dataset and mean rank", ""]
    if cd is not None and len(cd.scores.columns):
        atomic_write_text(out / "scores.csv", cd.scores.to_csv())
        ranks = cd.mean_ranks.rename("mean_rank").to_frame()
        atomic_write_text(out / "mean_rank.csv", ranks.to_csv())
        lines += ["| dataset | " + " | ".join(cd.scores.columns) + " |", "|---" * (len(cd.scores.columns) + 1) + "|"]
        lines += [f"| {ds} | " + " | ".join(f"{x:+.2f}" for x in r) + " |" for ds, r in cd.scores.iterrows()]
        lines += ["| **mean rank** | " + " | ".join(f"{cd.mean_ranks[m]:.2f}" for m in cd.scores.columns) + " |", ""]
        if np.isfinite(cd.friedman_p):
            lines.append(f"Friedman χ² = {cd.friedman_stat:.3f}, p = {cd.friedman_p:.3g} "
                         f"({len(cd.scores)} datasets, {len(cd.scores.columns)} methods); post-hoc: pairwise "
                         f"{opts.posthoc} with Holm correction, α = {opts.alpha:g}.")
            atomic_write_text(out / "posthoc.csv", cd.posthoc.to_csv())
        if opts.plots and len(cd.scores) >= 2:
            plots.write_cd_diagram(cd, out, opts.alpha)
        notes += cd.notes
    else:
        notes.append("no dataset has both the baseline and another method: nothing to compare")
    lines += [f"Ranks: 1 = best {symbol} within a dataset (ties share the average rank). Per-dataset tables: "
              + ", ".join(f"{Path(reports_dir) / ds / 'table.md'}" for ds in known) + "."]
    lines += [f"- {n}" for n in notes]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return out


def _for_dataset(opts: Options, dataset: str) -> Options:
    """``opts`` without ``published`` for a dataset the published table is not about."""
    if not opts.published:
        return opts
    from dataclasses import replace

    from mtlbench.results import published

    return opts if published.load(opts.published).dataset == dataset else replace(opts, published=None)


def build_summary(results_dir, dataset: str, baseline: str = "stl", methods: Optional[Sequence[str]] = None,
                  split: str = "test"):
    """``(summary DataFrame, notes)`` of one dataset, written nowhere (for notebooks)."""
    if not list(iter_runs(results_dir)):
        raise ReportError(f"no runs under {Path(results_dir).resolve()}")
    opts = Options(baseline=baseline, methods=methods, split=split, plots=False).check()
    runset = collect(results_dir, dataset, baseline, methods, split)
    if runset.values.empty:
        return pd.DataFrame(), runset.notes
    a = analyze(runset, opts)
    return summary_frame(a), a.notes + a.warnings
