"""The statistics layer: pure functions, DataFrames in, DataFrames out.

Δ_T (task-balanced, positive = better), as AdaShare / LibMTL report it:

    Δ_T = (1/T) Σ_t (1/|M_t|) Σ_{m∈M_t} s_m · (M_method,m − M_stl,m) / M_stl,m · 100

with s_m = +1 when higher is better, −1 otherwise, and M_stl the single-task
baseline of the same dataset (mean over its seeds). A metric whose baseline value is
<= 0 or not finite cannot give a relative change: it is left out, with a note; a task
left with no metric is left out of the task mean, with a note.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Tuple

import pandas as pd

Scores = Mapping[str, Mapping[str, float]]

DELTA_T_DEFINITION = ("Δ_T = mean over tasks of the mean over that task's metrics of "
                      "s·(M_method − M_stl)/M_stl·100, s = +1 if higher is better else −1; "
                      "positive = better than single-task learning")


def delta_t(method: Scores, baseline: Scores, higher_is_better: Mapping[str, Mapping[str, bool]]
            ) -> Tuple[float, List[str]]:
    """Δ_T in % of ``method`` against ``baseline`` (``{task: {metric: value}}`` each).

    Returns ``(value, notes)``; ``value`` is NaN when no task is comparable.
    """
    notes: List[str] = []
    per_task: List[float] = []
    for task, metrics in baseline.items():
        if task not in method:
            notes.append(f"task '{task}' missing from the method's results: left out")
            continue
        changes = []
        for metric, base in metrics.items():
            value = method[task].get(metric)
            if value is None or not _finite(value):
                notes.append(f"{task}/{metric}: no finite value for the method: left out")
                continue
            if not _finite(base) or float(base) <= 0:
                notes.append(f"{task}/{metric}: baseline value {base!r} <= 0 or not finite, "
                             f"no relative change: left out")
                continue
            direction = higher_is_better.get(task, {}).get(metric)
            if direction is None:
                notes.append(f"{task}/{metric}: direction (higher_is_better) unknown: left out")
                continue
            sign = 1.0 if direction else -1.0
            changes.append(sign * (value - base) / base * 100.0)
        if changes:
            per_task.append(sum(changes) / len(changes))
        else:
            notes.append(f"task '{task}': no usable metric: left out of the task mean")
    return (sum(per_task) / len(per_task) if per_task else float("nan")), notes


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def per_seed(runs: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Wide table: index (method, seed), columns (task, metric), one value per cell.

    When a (method, seed) pair was run more than once (``force=true``), the most recently
    finished run is kept.
    """
    df = runs[runs["split"] == split].sort_values(["finished_at", "run_id"], na_position="first")
    df = df.drop_duplicates(["method", "seed", "task", "metric"], keep="last")
    return df.pivot_table(index=["method", "seed"], columns=["task", "metric"], values="value",
                          aggfunc="first")


def directions(runs: pd.DataFrame) -> Dict[str, Dict[str, bool]]:
    out: Dict[str, Dict[str, bool]] = {}
    for (task, metric), hib in runs.dropna(subset=["task"]).groupby(["task", "metric"])["higher_is_better"].first().items():
        out.setdefault(task, {})[metric] = bool(hib)
    return out


def _nested(row: pd.Series) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for (task, metric), v in row.items():
        if _finite(v):
            out.setdefault(task, {})[metric] = float(v)
    return out


def summarize(runs: pd.DataFrame, baseline: str = "stl", split: str = "test") -> Tuple[pd.DataFrame, List[str]]:
    """One row per method: n_seeds, mean/std (ddof=1) of every metric, params, delta_t.

    ``runs`` is ``load_runs(...)`` restricted to one dataset and completed runs.
    Returns ``(summary, notes)``.
    """
    wide = per_seed(runs, split)
    hib = directions(runs)
    notes: List[str] = []
    means = wide.groupby(level="method").mean()
    stds = wide.groupby(level="method").std(ddof=1)
    params = runs.drop_duplicates("run_id").groupby("method")["params_total"].mean()
    base = _nested(means.loc[baseline]) if baseline in means.index else None
    if base is None:
        notes.append(f"no completed '{baseline}' runs for this dataset: Δ_T needs them "
                     f"(run `python -m mtlbench run method={baseline} dataset=<name>` with the same seeds)")
    rows = []
    for method in means.index:
        row = {"method": method, "n_seeds": int(wide.loc[method].index.nunique()),
               "params": float(params.get(method, float("nan")))}
        if base is not None:
            d, why = delta_t(_nested(means.loc[method]), base, hib)
            notes += [f"{method}: {w}" for w in why]
        else:
            d = float("nan")
        row["delta_t"] = d
        for task, metric in means.columns:
            row[f"{task}/{metric}_mean"] = float(means.loc[method, (task, metric)])
            row[f"{task}/{metric}_std"] = float(stds.loc[method, (task, metric)])
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        order = {baseline: 0}
        out = out.sort_values("method", key=lambda s: s.map(lambda m: (order.get(m, 1), m)))
    return out.reset_index(drop=True), list(dict.fromkeys(notes))
