"""Significance tests for reports: every method vs the baseline, and methods across datasets.

Per dataset (one table): for each (method, task, metric) cell, a two-sided test of the
method's seeds against the baseline's seeds. Seeds of two methods are independent
samples (not paired), so the default is Welch's t-test (``scipy.stats.ttest_ind(...,
equal_var=False)``); ``mannwhitney`` (``scipy.stats.mannwhitneyu``, exact for small
samples without ties) and ``permutation`` (``scipy.stats.permutation_test`` on the
difference of means, exact when the permutations can be enumerated) are the options.
The p-values of all cells of a table are corrected together with Holm's step-down method
(``statsmodels.stats.multitest.multipletests(method="holm")``). A cell is marked better
(†) / worse (‡) when its corrected p < α and the mean moved in that direction according
to the metric's ``higher_is_better``.

Rank tests on few seeds have a smallest attainable p-value (Mann-Whitney, 3 vs 3 seeds:
0.1): ``min_pvalue`` asks the library for the p-value of two fully separated samples of
the same sizes, and the report warns when no cell can reach α (Holm included).

Across datasets (Demšar 2006, as scikit-posthocs implements it): Friedman's test
(``scipy.stats.friedmanchisquare``) over the datasets x methods score matrix, then
pairwise Wilcoxon signed-rank (``scikit_posthocs.posthoc_wilcoxon``) or Conover
(``posthoc_conover_friedman``) tests with Holm correction, and the mean rank per method.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

TESTS = {
    "welch": "Welch's t-test (two-sided, unequal variances)",
    "mannwhitney": "Mann-Whitney U test (two-sided)",
    "permutation": "permutation test on the difference of means (two-sided)",
}
POSTHOCS = ("wilcoxon", "conover")
BETTER, WORSE = "better", "worse"


def check_test(test: str) -> str:
    if test not in TESTS:
        raise ValueError(f"unknown test '{test}'; use test=welch (default), test=mannwhitney or test=permutation")
    return test


def _mean_diff(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def pvalue(x: Sequence[float], y: Sequence[float], test: str = "welch", seed: int = 0) -> float:
    """Two-sided p-value of ``test`` for samples ``x`` vs ``y``; NaN when it is undefined
    (fewer than 2 values on a side, or no variance at all for Welch)."""
    check_test(test)
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) < 2 or len(y) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if test == "welch":
            p = st.ttest_ind(x, y, equal_var=False).pvalue
        elif test == "mannwhitney":
            p = st.mannwhitneyu(x, y, alternative="two-sided").pvalue
        else:
            p = st.permutation_test((x, y), _mean_diff, permutation_type="independent", vectorized=True,
                                    n_resamples=9999, alternative="two-sided",
                                    rng=np.random.default_rng(seed)).pvalue
    return float(p) if p is not None and np.isfinite(p) else math.nan


def min_pvalue(n1: int, n2: int, test: str = "welch") -> float:
    """The smallest two-sided p-value ``test`` can return with samples of sizes n1 and n2.

    For the rank and permutation tests it is the library's p-value of two fully separated
    samples; Welch's t-test has no floor (0.0) once both sides have 2 values."""
    check_test(test)
    if n1 < 2 or n2 < 2:
        return math.nan
    if test == "welch":
        return 0.0
    return pvalue(np.arange(n1), np.arange(n1, n1 + n2) + 0.5, test)


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Holm-corrected p-values (NaN entries stay NaN and do not count as hypotheses)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return out


def compare_to_baseline(values: pd.DataFrame, baseline: str, higher_is_better: Mapping[str, Mapping[str, bool]],
                        test: str = "welch", alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """One row per (method, task, metric) cell of every non-baseline method.

    ``values``: index (method, seed), columns (task, metric) (``stats.per_seed`` layout).
    Columns: n, n_base, mean, base_mean, p, p_holm, significant, mark (``better`` /
    ``worse`` / ``""``). Holm runs over all cells with a defined p-value.
    """
    check_test(test)
    rows = []
    if baseline not in values.index.get_level_values(0):
        return pd.DataFrame(rows, columns=["method", "task", "metric", "n", "n_base", "mean", "base_mean",
                                           "p", "p_holm", "significant", "mark"])
    base = values.loc[baseline]
    for method in dict.fromkeys(values.index.get_level_values(0)):
        if method == baseline:
            continue
        sub = values.loc[method]
        for task, metric in values.columns:
            x, y = sub[(task, metric)].dropna().to_numpy(), base[(task, metric)].dropna().to_numpy()
            rows.append({"method": method, "task": task, "metric": metric, "n": len(x), "n_base": len(y),
                         "mean": float(np.mean(x)) if len(x) else math.nan,
                         "base_mean": float(np.mean(y)) if len(y) else math.nan,
                         "p": pvalue(x, y, test, seed)})
    df = pd.DataFrame(rows, columns=["method", "task", "metric", "n", "n_base", "mean", "base_mean", "p"])
    df["p_holm"] = holm(df["p"].to_numpy(), alpha) if len(df) else []
    df["significant"] = df["p_holm"] < alpha
    hib = [higher_is_better.get(t, {}).get(m) for t, m in zip(df["task"], df["metric"])]
    up = df["mean"] > df["base_mean"]
    df["mark"] = [("" if not sig or h is None else (BETTER if bool(u) == bool(h) else WORSE))
                  for sig, u, h in zip(df["significant"], up, hib)]
    return df


def power_warnings(n_pairs: Sequence[tuple], test: str, alpha: float, n_cells: int) -> List[str]:
    """Warnings for (n_method, n_base) sample sizes whose smallest attainable p cannot reach α
    (or α / n_cells, the threshold Holm puts on the smallest p of n_cells tests)."""
    out = []
    for n1, n2 in sorted(set(n_pairs)):
        p0 = min_pvalue(n1, n2, test)
        if not np.isfinite(p0):
            continue
        if p0 >= alpha:
            out.append(f"with {n1} vs {n2} seeds the {test} test cannot reach p < {alpha:g} "
                       f"(smallest possible p = {p0:.3g}): no cell of such a method can be marked; "
                       f"run more seeds or use test=welch")
        elif n_cells > 1 and p0 >= alpha / n_cells:
            out.append(f"with {n1} vs {n2} seeds the smallest possible {test} p-value is {p0:.3g}, "
                       f"above the α/{n_cells} = {alpha / n_cells:.3g} Holm needs for the first of "
                       f"{n_cells} cells: no cell of such a method can be marked; run more seeds")
    return out


@dataclass
class CrossDataset:
    """Result of ``cross_dataset``: scores [datasets x methods], mean ranks, tests and notes."""
    scores: pd.DataFrame
    mean_ranks: pd.Series
    ranks: pd.DataFrame
    friedman_stat: float = math.nan
    friedman_p: float = math.nan
    posthoc: Optional[pd.DataFrame] = None
    notes: List[str] = field(default_factory=list)


def cross_dataset(scores: pd.DataFrame, higher_is_better: bool = True, posthoc: str = "wilcoxon",
                  alpha: float = 0.05) -> CrossDataset:
    """Friedman + Holm-corrected pairwise post-hoc tests over ``scores`` (rows: datasets,
    columns: methods; one score per cell, e.g. Δ_T). Methods missing on any dataset are
    dropped (Friedman needs complete blocks), with a note."""
    if posthoc not in POSTHOCS:
        raise ValueError(f"unknown posthoc '{posthoc}'; use posthoc=wilcoxon or posthoc=conover")
    notes: List[str] = []
    incomplete = [m for m in scores.columns if scores[m].isna().any()]
    if incomplete:
        notes.append(f"left out of the cross-dataset comparison (not run on every dataset): {', '.join(incomplete)}")
    s = scores.drop(columns=incomplete)
    ranks = s.rank(axis=1, ascending=not higher_is_better, method="average")
    out = CrossDataset(s, ranks.mean().sort_values(), ranks, notes=notes)
    n_data, n_meth = s.shape
    if n_data < 6:
        notes.append(f"only {n_data} dataset(s): Friedman / Wilcoxon tests over so few datasets can hardly "
                     f"(Wilcoxon with fewer than 6 pairs: never) reach α = {alpha:g}; read the mean ranks as "
                     f"descriptive")
    if n_meth < 3 or n_data < 2:
        notes.append(f"Friedman's test needs >= 3 methods and >= 2 datasets with every method "
                     f"(have {n_meth} methods, {n_data} datasets): no test")
        return out
    import scikit_posthocs as sp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = st.friedmanchisquare(*[s[c].to_numpy() for c in s.columns])
        out.friedman_stat, out.friedman_p = float(res.statistic), float(res.pvalue)
        if posthoc == "wilcoxon":  # melted in the same dataset order per method: pairs line up
            long = s.reset_index(drop=True).melt(var_name="method", value_name="score")
            ph = sp.posthoc_wilcoxon(long, val_col="score", group_col="method", p_adjust="holm")
        else:
            ph = sp.posthoc_conover_friedman(s.reset_index(drop=True), p_adjust="holm")
    out.posthoc = ph.loc[list(s.columns), list(s.columns)]
    return out

