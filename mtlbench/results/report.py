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
from mtlbench.results.files import remove_temp_files
from mtlbench.results.store import atomic_write_text, iter_runs, read_log

FORMATS = ("md", "tex", "csv", "html")
SPLITS = ("test", "val")
POSTHOCS = ("wilcoxon", "conover")
OUTPUTS = (".md", ".tex", ".csv", ".html", ".png", ".pdf")  # what a report folder holds (stale ones removed)


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
    # publication style of the tables (see tables.py): display names, digits, percent, LaTeX scaling, footnote
    names: Optional[dict] = field(default_factory=dict)
    precision: Optional[int] = None
    percent: bool = False
    resizebox: bool = False
    footnote: str = "short"
    second_mark: str = "italic"
    columns: Optional[Sequence[str]] = None  # besides the metrics (tables.COLUMNS); None = all
    published: Optional[str] = None  # a published table's key (results/published.py): its rows beside the measured

    def style(self):
        from mtlbench.results.tables import Style

        return Style(names=None if self.names is False or self.names is None else dict(self.names),
                     precision=self.precision, percent=bool(self.percent), resizebox=bool(self.resizebox),
                     footnote=self.footnote, second_mark=self.second_mark,
                     **({} if self.columns is None else {"columns": tuple(self.columns)}))

    def check(self) -> "Options":
        """One-line ValueError naming the option, its allowed values and the value given."""
        check_test(self.test)
        delta_info(self.delta)
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown format '{bad[0]}'; formats: {', '.join(FORMATS)} (e.g. format=[md,tex])")
        for key in ("alpha", "confidence"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1):
                raise ValueError(f"{key} must lie in (0, 1), e.g. alpha=0.05 confidence=0.95 (got {v!r})")
        for key, allowed in (("split", SPLITS), ("posthoc", POSTHOCS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)} (got {getattr(self, key)!r})")
        for key, low in (("n_resamples", 1), ("seed", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{key} must be an integer >= {low} (got {v!r})")
        if not isinstance(self.plots, bool):
            raise ValueError(f"plots must be true or false (got {self.plots!r})")
        if not isinstance(self.baseline, str) or not self.baseline:
            raise ValueError(f"baseline must be a method name, e.g. baseline=stl (got {self.baseline!r})")
        for key in ("methods", "metrics"):
            v = getattr(self, key)
            if v is not None and (not v or not all(isinstance(x, str) and x for x in v)):
                raise ValueError(f"{key} must be a non-empty list of names or null (got {v!r})")
        if self.footnote not in ("short", "long"):
            raise ValueError(f"footnote must be short or long (got {self.footnote!r})")
        if self.second_mark not in ("italic", "ins", "u"):
            raise ValueError(f"second_mark must be italic, ins or u (got {self.second_mark!r})")
        if self.precision is not None and (isinstance(self.precision, bool) or not isinstance(self.precision, int)
                                           or not 0 <= self.precision <= 10):
            raise ValueError(f"precision must be a number of digits 0..10 or null (got {self.precision!r})")
        from mtlbench.results.tables import COLUMNS

        bad = [c for c in (self.columns or ()) if c not in COLUMNS]
        if bad:
            raise ValueError(f"unknown column '{bad[0]}'; columns: {', '.join(COLUMNS)} (e.g. columns=[params,delta])")
        if self.names is not None and self.names is not False and not isinstance(self.names, dict):
            raise ValueError("names must be a mapping, e.g. names={hard_sharing: HS}, or false (identifiers)")
            from mtlbench.results import published

            published.load(self.published)  # an unknown key: one line naming the known ones
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


def check_names(results_dir, opts: Options) -> None:
    """Unknown ``baseline`` / ``methods`` / ``metrics`` names are errors (before anything is
    written): a method must have a run in the store or be a preset; a metric must appear in
    a completed run."""
    from mtlbench.engine.configs import yaml_options

    recs = [r for _, r in iter_runs(results_dir, [])]
    known = {r.get("method") for r in recs} | set(yaml_options("method", package_only=True))
    for key, names in (("baseline", [opts.baseline]), ("methods", opts.methods or [])):
        bad = [m for m in names if m not in known]
        if bad:
            have = sorted({str(r.get("method")) for r in recs})
            raise ReportError(f"unknown {key} '{bad[0]}': no run of it in {results_dir} and no such preset; "
                              f"methods with runs: {', '.join(have) or 'none'}")
    if opts.metrics:
        seen = {m for r in recs if r.get("status") == "completed"
                for by_t in (r.get("metrics") or {}).values() for ms in by_t.values() for m in ms}
        bad = [m for m in opts.metrics if m not in seen]
        if bad:
            raise ReportError(f"unknown metric '{bad[0]}' in metrics=; metrics in the runs: {', '.join(sorted(seen))}")


def _report_dir(path: Path) -> Path:
    """The report folder, created, with the temp files of a killed report removed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create report folder {path}: {exc.strerror or exc}; set reports_dir= to a "
                          f"writable folder") from None
    remove_temp_files(path, recursive=False)
    return path


def _remove_stale(out: Path, written: Sequence[str]) -> None:
    """Report outputs of an earlier report that this one did not write (a method whose runs
    are gone, a plot no longer drawn) are removed, so the folder holds exactly this report."""
    for p in out.iterdir():
        if p.is_file() and p.suffix in OUTPUTS and p.name not in written:
            p.unlink(missing_ok=True)


def _log_notes(a: Analysis) -> None:
    for r in a.runset.runs.itertuples():
        f = Path(r.path) / "metrics.jsonl"
        if f.is_file():
            _, problem = read_log(f)
            if problem:
                a.notes.append(f"{problem}: its per-epoch curve is left out (the run's results are kept)")


def write_report(results_dir, reports_dir, dataset: str, baseline: str = "stl",
                 methods: Optional[Sequence[str]] = None, split: str = "test",
                 opts: Optional[Options] = None) -> Path:
    """Write one dataset's report (atomically, file by file; earlier outputs it no longer
    has removed); returns its folder. Raises ReportError when the dataset has no completed
    run, or for an unknown baseline / method / metric name (nothing is written then)."""
    from mtlbench.results import plots, tables

    opts = (opts or Options(baseline=baseline, methods=methods, split=split)).check()
    known = datasets_in(results_dir)
    if not known and not datasets_in(results_dir, completed=False):
        raise ReportError(f"no runs under {Path(results_dir).resolve()}: run `python -m mtlbench run` first "
                          f"or point results_dir= at your results store")
    if dataset not in known:
        raise ReportError(f"no completed runs for dataset '{dataset}' in {results_dir}; datasets with completed "
                          f"runs: {known}")
    check_names(results_dir, opts)
    runset = collect(results_dir, dataset, opts.baseline, opts.methods, opts.split, opts.metrics)
    out = _report_dir(Path(reports_dir) / dataset)
    written: List[str] = []

    def put(name: str, text: str) -> None:
        atomic_write_text(out / name, text)
        written.append(name)

    if runset.values.empty:
        text = f"# {dataset}: nothing to compare\n\n" + "".join(f"- {n}\n" for n in runset.notes)
        put("summary.md", text)
        put("table.md", text)
        put("summary.csv", "method,n_seeds,params,delta_t,delta_t_ci_low,delta_t_ci_high\n")
        _remove_stale(out, written)
        return out
    a = analyze(runset, opts)
    _log_notes(a)
    put("summary.csv", summary_frame(a).to_csv(index=False))
    put("significance.csv", a.sig.to_csv(index=False))
    table = tables.build(a, opts.style())
    if opts.published:
        from mtlbench.results import published

        table = published.extend(table, a, published.load(opts.published))
    md = tables.to_markdown(table)
    put("summary.md", tables.to_markdown(table, long=True))  # always the long footnote
    writers = {"md": ("table.md", lambda: md), "tex": ("table.tex", lambda: tables.to_latex(table)),
               "csv": ("table.csv", lambda: tables.to_csv(table)), "html": ("table.html", lambda: tables.to_html(table))}
    for f in opts.formats:
        name, render = writers[f]
        put(name, render())
    if opts.plots:
        written += [p.name for p in plots.write_dataset_plots(a, out)]
    _remove_stale(out, written)
    return out


def write_all(results_dir, reports_dir, opts: Options) -> Path:
    """Every dataset's report, then the cross-dataset comparison in ``<reports_dir>/all/``."""
    from mtlbench.results import plots

    opts.check()
    known = datasets_in(results_dir)
    if not known:
        raise ReportError(f"no completed runs under {Path(results_dir).resolve()}: nothing to report for any "
                          f"dataset; run `python -m mtlbench run` first, point results_dir= at your results "
                          f"store, or pick one with dataset=<name>")
    check_names(results_dir, opts)
    scores, notes = {}, []
    idle = sorted(set(datasets_in(results_dir, completed=False)) - set(known))
    if idle:
        notes.append(f"dataset(s) without a completed run left out: {', '.join(idle)}")
    symbol, _, hib = delta_info(opts.delta)
    for ds in known:
        out = write_report(results_dir, reports_dir, ds, opts=_for_dataset(opts, ds))
        summ = pd.read_csv(out / "summary.csv")
        if opts.delta in summ and summ[opts.delta].notna().any():
            scores[ds] = summ.set_index("method")[opts.delta]
        else:
            notes.append(f"{ds}: no {symbol} (no '{opts.baseline}' baseline runs): left out of the comparison")
    out = _report_dir(Path(reports_dir) / "all")
    written: List[str] = []

    def put(name: str, text: str) -> None:
        atomic_write_text(out / name, text)
        written.append(name)

    matrix = pd.DataFrame(scores).T
    if opts.methods:
        matrix = matrix[[m for m in matrix.columns if m in set(opts.methods) | {opts.baseline}]]
    cd = cross_dataset(matrix, higher_is_better=hib, posthoc=opts.posthoc, alpha=opts.alpha) if len(matrix) else None
    lines = [f"# Across datasets: {symbol} per dataset and mean rank", ""]
    if cd is not None and len(cd.scores.columns):
        put("scores.csv", cd.scores.to_csv())
        ranks = cd.mean_ranks.rename("mean_rank").to_frame()
        put("mean_rank.csv", ranks.to_csv())
        lines += ["| dataset | " + " | ".join(cd.scores.columns) + " |", "|---" * (len(cd.scores.columns) + 1) + "|"]
        lines += [f"| {ds} | " + " | ".join(f"{x:+.2f}" for x in r) + " |" for ds, r in cd.scores.iterrows()]
        lines += ["| **mean rank** | " + " | ".join(f"{cd.mean_ranks[m]:.2f}" for m in cd.scores.columns) + " |", ""]
        if np.isfinite(cd.friedman_p):
            lines.append(f"Friedman χ² = {cd.friedman_stat:.3f}, p = {cd.friedman_p:.3g} "
                         f"({len(cd.scores)} datasets, {len(cd.scores.columns)} methods); post-hoc: pairwise "
                         f"{opts.posthoc} with Holm correction, α = {opts.alpha:g}.")
            put("posthoc.csv", cd.posthoc.to_csv())
        if opts.plots and len(cd.scores) >= 2:
            written += [p.name for p in plots.write_cd_diagram(cd, out, opts.alpha)]
        notes += cd.notes
    else:
        notes.append("no dataset has both the baseline and another method: nothing to compare")
    lines += [f"Ranks: 1 = best {symbol} within a dataset (ties share the average rank). Per-dataset tables: "
              + ", ".join(f"{Path(reports_dir) / ds / 'table.md'}" for ds in known) + "."]
    lines += [f"- {n}" for n in notes]
    put("summary.md", "\n".join(lines) + "\n")
    _remove_stale(out, written)
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
    if not list(iter_runs(results_dir, [])):
        raise ReportError(f"no runs under {Path(results_dir).resolve()}")
    opts = Options(baseline=baseline, methods=methods, split=split, plots=False).check()
    runset = collect(results_dir, dataset, baseline, methods, split)
    if runset.values.empty:
        return pd.DataFrame(), runset.notes
    a = analyze(runset, opts)
    return summary_frame(a), a.notes + a.warnings
