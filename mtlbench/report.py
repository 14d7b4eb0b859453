"""``python -m mtlbench report``: the results store -> ``<reports_dir>/<dataset>/summary.{csv,md}``.

``summary.csv`` is machine-readable (numeric columns); ``summary.md`` is the same table
for people, with the Δ_T definition and every note (left-out metrics, missing baseline).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .stats import DELTA_T_DEFINITION, summarize
from .store import atomic_write_text, load_runs


class ReportError(RuntimeError):
    pass


def build_summary(results_dir, dataset: str, baseline: str = "stl",
                  methods: Optional[Sequence[str]] = None, split: str = "test"):
    runs = load_runs(results_dir)
    if runs.empty:
        raise ReportError(f"no runs under {Path(results_dir).resolve()}: run `python -m mtlbench run` first "
                          f"or point results_dir= at your results store")
    failed = runs[(runs["dataset"] == dataset) & (runs["status"] != "completed")]["run_id"].nunique()
    runs = runs[(runs["dataset"] == dataset) & (runs["status"] == "completed")]
    if runs.empty:
        known = sorted(load_runs(results_dir)["dataset"].dropna().unique())
        raise ReportError(f"no completed runs for dataset '{dataset}' in {results_dir}; datasets with runs: {known}")
    if methods:
        keep = set(methods) | {baseline}
        runs = runs[runs["method"].isin(keep)]
    summary, notes = summarize(runs, baseline=baseline, split=split)
    if failed:
        notes.append(f"{failed} failed or unfinished run(s) of this dataset were skipped")
    return summary, notes


def _fmt(v, digits=4) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def to_markdown(summary: pd.DataFrame, dataset: str, baseline: str, split: str, notes) -> str:
    metric_cols = [c[:-5] for c in summary.columns if c.endswith("_mean")]
    header = ["method", "n_seeds", "params", "Δ_T (%)"] + metric_cols
    lines = [f"# {dataset}: {split} metrics (mean ± std over seeds)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in summary.iterrows():
        cells = [r["method"], str(r["n_seeds"]), f"{r['params']:,.0f}" if not math.isnan(r["params"]) else "–",
                 "–" if math.isnan(r["delta_t"]) else f"{r['delta_t']:+.2f}"]
        cells += [f"{_fmt(r[c + '_mean'])} ± {_fmt(r[c + '_std'])}" for c in metric_cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Baseline: `{baseline}`. {DELTA_T_DEFINITION}."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(results_dir, reports_dir, dataset: str, baseline: str = "stl",
                 methods: Optional[Sequence[str]] = None, split: str = "test") -> Path:
    summary, notes = build_summary(results_dir, dataset, baseline, methods, split)
    out = Path(reports_dir) / dataset
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(out / "summary.md", to_markdown(summary, dataset, baseline, split, notes))
    return out
