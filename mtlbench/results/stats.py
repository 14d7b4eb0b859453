"""The statistics layer: pure functions, DataFrames / arrays in, DataFrames / arrays out.

Δ_T (task-balanced, positive = better), as AdaShare / LibMTL report it:

    Δ_T = (1/T) Σ_t (1/|M_t|) Σ_{m∈M_t} s_m · (M_method,m − M_stl,m) / M_stl,m · 100

Δ_m (metric-balanced, as Nash-MTL / FAMO report it; positive = WORSE):

    Δ_m = (1/K) Σ_k (−1)^{δ_k} · (M_method,k − M_stl,k) / M_stl,k · 100,  δ_k = 1 if higher is better

i.e. Δ_m = −(flat mean over all K metrics of the signed relative change). s_m = +1 when
higher is better, −1 otherwise; M_stl is the single-task baseline of the same dataset
(mean over its seeds). A metric whose baseline value is <= 0 or not finite cannot give a
relative change: it is left out, with a note; a task left with no metric is left out of
the task mean, with a note.

The 95% confidence interval of Δ (``bootstrap_delta``) resamples the method's seeds and
the baseline's seeds independently (two unpaired samples; seeds of two methods share
nothing) with ``scipy.stats.bootstrap`` (percentile method: with 2-5 seeds the BCa
jackknife is degenerate), recomputing both seed means and Δ on every resample.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats as _st

Scores = Mapping[str, Mapping[str, float]]
Column = Tuple[str, str]

DELTA_T_DEFINITION = ("Δ_T = mean over tasks of the mean over that task's metrics of "
                      "s·(M_method − M_stl)/M_stl·100, s = +1 if higher is better else −1; "
                      "positive = better than single-task learning")
DELTA_M_DEFINITION = ("Δ_m = mean over all metrics of (−1)^δ·(M_method − M_stl)/M_stl·100, "
                      "δ = 1 if higher is better (Nash-MTL's metric-balanced Δ, printed with "
                      "Nash-MTL's sign: positive = WORSE than single-task learning)")
DELTAS = {"delta_t": ("Δ_T", DELTA_T_DEFINITION, True), "delta_m": ("Δ_m", DELTA_M_DEFINITION, False)}


def delta_info(kind: str) -> Tuple[str, str, bool]:
    """``(symbol, definition, higher_is_better)`` of a Δ variant (``delta_t`` / ``delta_m``)."""
    if kind not in DELTAS:
        raise ValueError(f"unknown delta '{kind}'; use delta=delta_t (task-balanced, positive = better) "
                         f"or delta=delta_m (Nash-MTL metric-balanced, positive = worse)")
    return DELTAS[kind]


@dataclass
class DeltaSpec:
    """Which (task, metric) columns enter Δ, their signs and how they average into tasks."""
    columns: List[Column]
    signs: np.ndarray                      # [M]: +1 higher is better, −1 lower is better
    tasks: List[str]                       # tasks with at least one usable metric
    task_matrix: np.ndarray                # [T, M]: row t = 1/|M_t| on task t's columns
    notes: List[str] = field(default_factory=list)

    def relative(self, x: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Signed relative change in % (positive = better), per metric; ``x``/``b``: [..., M]."""
        return self.signs * (x - b) / b * 100.0

    def per_task(self, x: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-task mean of the signed relative changes: [..., T] (positive = better)."""
        return self.relative(x, b) @ self.task_matrix.T

    def delta(self, x: np.ndarray, b: np.ndarray, kind: str = "delta_t") -> np.ndarray:
        if not self.columns:
            return np.full(np.shape(x)[:-1], np.nan)
        if kind == "delta_t":
            return self.per_task(x, b).mean(axis=-1)
        delta_info(kind)
        return -self.relative(x, b).mean(axis=-1)


def delta_spec(method: Scores, baseline: Scores, higher_is_better: Mapping[str, Mapping[str, bool]]
               ) -> DeltaSpec:
    """The columns both sides can compare, in the baseline's order, with notes on what is left out."""
    notes: List[str] = []
    cols: List[Column] = []
    signs: List[float] = []
    tasks: List[str] = []
    spans: List[Tuple[int, int]] = []
    for task, metrics in baseline.items():
        if task not in method:
            notes.append(f"task '{task}' missing from the method's results: left out")
            continue
        start = len(cols)
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
            cols.append((task, metric))
            signs.append(1.0 if direction else -1.0)
        if len(cols) > start:
            tasks.append(task)
            spans.append((start, len(cols)))
        else:
            notes.append(f"task '{task}': no usable metric: left out of the task mean")
    matrix = np.zeros((len(tasks), len(cols)))
    for t, (a, b) in enumerate(spans):
        matrix[t, a:b] = 1.0 / (b - a)
    return DeltaSpec(cols, np.asarray(signs), tasks, matrix, notes)


def _vectors(spec: DeltaSpec, method: Scores, baseline: Scores) -> Tuple[np.ndarray, np.ndarray]:
    x = np.array([float(method[t][m]) for t, m in spec.columns])
    b = np.array([float(baseline[t][m]) for t, m in spec.columns])
    return x, b


def delta_t(method: Scores, baseline: Scores, higher_is_better: Mapping[str, Mapping[str, bool]]
            ) -> Tuple[float, List[str]]:
    """Δ_T in % of ``method`` against ``baseline`` (``{task: {metric: value}}`` each).

    Returns ``(value, notes)``; ``value`` is NaN when no task is comparable.
    """
    spec = delta_spec(method, baseline, higher_is_better)
    return float(spec.delta(*_vectors(spec, method, baseline), "delta_t")), spec.notes


def delta_m(method: Scores, baseline: Scores, higher_is_better: Mapping[str, Mapping[str, bool]]
            ) -> Tuple[float, List[str]]:
    """Δ_m in % (Nash-MTL: metric-balanced, positive = worse); same inputs and notes as ``delta_t``."""
    spec = delta_spec(method, baseline, higher_is_better)
    return float(spec.delta(*_vectors(spec, method, baseline), "delta_m")), spec.notes


@dataclass
class DeltaCI:
    """Point estimates and bootstrap CI bounds: ``delta`` scalars, ``per_task`` arrays [T]."""
    delta: float
    low: float
    high: float
    tasks: List[str]
    per_task: np.ndarray
    per_task_low: np.ndarray
    per_task_high: np.ndarray


def bootstrap_delta(method_seeds: np.ndarray, base_seeds: np.ndarray, spec: DeltaSpec, kind: str = "delta_t",
                    confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> DeltaCI:
    """Δ (``kind``) and per-task relative change with percentile bootstrap CIs.

    ``method_seeds`` [n_method, M] and ``base_seeds`` [n_base, M] hold one row per seed, the
    columns of ``spec``. The two samples are resampled independently (``paired=False``);
    with fewer than 2 seeds on either side the bounds are NaN (no spread to resample).
    """
    x, b = np.asarray(method_seeds, float), np.asarray(base_seeds, float)
    point_x, point_b = x.mean(axis=0), b.mean(axis=0)
    point = float(spec.delta(point_x, point_b, kind))
    tasks_pt = spec.per_task(point_x, point_b) if spec.columns else np.zeros(0)
    nan_t = np.full(len(spec.tasks), np.nan)
    if len(x) < 2 or len(b) < 2 or not spec.columns:
        return DeltaCI(point, math.nan, math.nan, spec.tasks, tasks_pt, nan_t, nan_t.copy())

    def statistic(i, j, axis=-1):
        xm, bm = x[i].mean(axis=-2), b[j].mean(axis=-2)  # [..., M]
        out = np.concatenate([spec.delta(xm, bm, kind)[..., None], spec.per_task(xm, bm)], axis=-1)
        return np.moveaxis(out, -1, 0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (identical) resamples are fine for percentiles
        res = _st.bootstrap((np.arange(len(x)), np.arange(len(b))), statistic, vectorized=True,
                            paired=False, confidence_level=confidence, n_resamples=n_resamples,
                            method="percentile", rng=np.random.default_rng(seed))
    lo, hi = np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)
    return DeltaCI(point, float(lo[0]), float(hi[0]), spec.tasks, tasks_pt, lo[1:], hi[1:])


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


def column_ranks(table: pd.DataFrame, higher_is_better: Sequence[bool]) -> pd.DataFrame:
    """Rank of every row within each column (1 = best by that column's direction; ties share
    the average rank, as Demšar 2006 ranks; NaN cells stay NaN)."""
    out = {}
    for col, hib in zip(table.columns, higher_is_better):
        out[col] = table[col].rank(ascending=not hib, method="average")
    return pd.DataFrame(out, index=table.index)
