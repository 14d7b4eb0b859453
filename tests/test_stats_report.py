"""The report's statistics against scipy / statsmodels / scikit-posthocs called directly."""
import math

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from mtlbench.results.significance import (compare_to_baseline, cross_dataset, holm, min_pvalue, power_warnings,
                                   pvalue)
from mtlbench.results.stats import bootstrap_delta, delta_m, delta_spec, delta_t

HIB = {"a": {"acc": True, "err": False}, "b": {"acc": True}}


# ----------------------------------------------------------------- Δ_m
def test_delta_m_is_metric_balanced_with_nash_mtl_sign():
    method = {"a": {"acc": 0.55, "err": 0.30}, "b": {"acc": 0.45}}
    base = {"a": {"acc": 0.50, "err": 0.40}, "b": {"acc": 0.50}}
    # signed changes (+ = better): acc +10, err +25, b/acc -10
    # Δ_T = ((10 + 25) / 2 + (-10)) / 2 = 3.75;  Δ_m = -(10 + 25 - 10) / 3 = -8.333 (negative = better)
    assert delta_t(method, base, HIB)[0] == pytest.approx(3.75)
    assert delta_m(method, base, HIB)[0] == pytest.approx(-25 / 3)
    worse = {"a": {"acc": 0.45, "err": 0.40}, "b": {"acc": 0.50}}
    assert delta_m(worse, base, HIB)[0] == pytest.approx(10 / 3)  # worse -> positive


# ----------------------------------------------------------------- bootstrap CI
def _seeds(rng, n, loc, scale=0.02):
    return np.column_stack([rng.normal(loc[0], scale, n), rng.normal(loc[1], scale, n), rng.normal(loc[2], scale, n)])


def _spec():
    means = {"a": {"acc": 0.8, "err": 0.3}, "b": {"acc": 0.7}}
    return delta_spec(means, means, HIB)


def test_bootstrap_point_is_delta_t_of_the_seed_means_and_the_ci_covers_it():
    rng = np.random.default_rng(1)
    x, b = _seeds(rng, 4, (0.82, 0.28, 0.69)), _seeds(rng, 3, (0.80, 0.30, 0.70))
    spec = _spec()
    assert spec.columns == [("a", "acc"), ("a", "err"), ("b", "acc")]
    ci = bootstrap_delta(x, b, spec, "delta_t", n_resamples=2000)
    nest = lambda v: {"a": {"acc": v[0], "err": v[1]}, "b": {"acc": v[2]}}  # noqa: E731
    assert ci.delta == pytest.approx(delta_t(nest(x.mean(0)), nest(b.mean(0)), HIB)[0])
    assert ci.low <= ci.delta <= ci.high and ci.low < ci.high
    assert ci.tasks == ["a", "b"]
    for t in range(2):
        assert ci.per_task_low[t] <= ci.per_task[t] <= ci.per_task_high[t]
    cim = bootstrap_delta(x, b, spec, "delta_m", n_resamples=2000)
    assert cim.delta == pytest.approx(delta_m(nest(x.mean(0)), nest(b.mean(0)), HIB)[0])
    assert cim.low <= cim.delta <= cim.high


def test_bootstrap_ci_shrinks_as_seeds_grow():
    rng = np.random.default_rng(0)
    widths = []
    for n in (3, 12, 48):
        x, b = _seeds(rng, n, (0.82, 0.28, 0.69)), _seeds(rng, n, (0.80, 0.30, 0.70))
        ci = bootstrap_delta(x, b, _spec(), n_resamples=2000)
        assert ci.low <= ci.delta <= ci.high
        widths.append(ci.high - ci.low)
    assert widths[0] > widths[1] > widths[2] > 0


def test_bootstrap_matches_scipy_called_directly_on_the_values():
    """One metric: Δ_T = (mean x − mean b) / mean b · 100; the same rng gives the same resamples."""
    x, b = np.array([0.81, 0.84, 0.79, 0.86]), np.array([0.80, 0.78, 0.82])
    spec = delta_spec({"t": {"acc": 1.0}}, {"t": {"acc": 1.0}}, {"t": {"acc": True}})
    ours = bootstrap_delta(x[:, None], b[:, None], spec, n_resamples=999, seed=7)
    ref = st.bootstrap((x, b), lambda u, v, axis=-1: (u.mean(axis) - v.mean(axis)) / v.mean(axis) * 100,
                       vectorized=True, paired=False, n_resamples=999, method="percentile",
                       rng=np.random.default_rng(7)).confidence_interval
    assert ours.low == pytest.approx(ref.low) and ours.high == pytest.approx(ref.high)


def test_bootstrap_with_one_seed_has_no_ci():
    ci = bootstrap_delta(np.array([[0.8, 0.3, 0.7]]), np.array([[0.8, 0.3, 0.7], [0.7, 0.2, 0.6]]), _spec())
    assert math.isfinite(ci.delta) and math.isnan(ci.low) and math.isnan(ci.high)


# ----------------------------------------------------------------- tests vs baseline
X, Y = [0.81, 0.84, 0.79, 0.86], [0.70, 0.72, 0.75]


def test_pvalues_are_scipys():
    assert pvalue(X, Y, "welch") == pytest.approx(st.ttest_ind(X, Y, equal_var=False).pvalue)
    assert pvalue(X, Y, "mannwhitney") == pytest.approx(st.mannwhitneyu(X, Y, alternative="two-sided").pvalue)
    perm = st.permutation_test((np.array(X), np.array(Y)), lambda a, b, axis: a.mean(axis) - b.mean(axis),
                               vectorized=True, permutation_type="independent", alternative="two-sided",
                               n_resamples=9999, rng=np.random.default_rng(0)).pvalue
    assert pvalue(X, Y, "permutation") == pytest.approx(perm)
    assert math.isnan(pvalue([0.8], Y))  # one seed: no test
    with pytest.raises(ValueError, match="welch"):
        pvalue(X, Y, "ttest")


def test_smallest_attainable_p_and_the_warning():
    assert min_pvalue(3, 3, "mannwhitney") == pytest.approx(
        st.mannwhitneyu([0, 1, 2], [3, 4, 5], alternative="two-sided").pvalue) == pytest.approx(0.1)
    assert min_pvalue(3, 3, "permutation") == pytest.approx(0.1)  # 2 / C(6, 3)
    assert min_pvalue(3, 3, "welch") == 0.0
    w = power_warnings([(3, 3)], "mannwhitney", 0.05, 10)
    assert len(w) == 1 and "cannot reach" in w[0] and "0.1" in w[0]
    assert power_warnings([(3, 3)], "welch", 0.05, 10) == []
    # 5 vs 5: min p = 2/252 = 0.0079 < 0.05, but above 0.05 / 9 cells
    w = power_warnings([(5, 5)], "mannwhitney", 0.05, 9)
    assert len(w) == 1 and "Holm" in w[0]


def test_holm_is_statsmodels_and_skips_nan():
    p = [0.01, 0.04, float("nan"), 0.03, 0.2]
    ok = [0.01, 0.04, 0.03, 0.2]
    got = holm(p)
    assert math.isnan(got[2])
    assert list(np.delete(got, 2)) == pytest.approx(list(multipletests(ok, method="holm")[1]))


def _values(data):
    """{(method, seed): {(task, metric): v}} -> per_seed layout."""
    df = pd.DataFrame.from_dict(data, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["method", "seed"])
    df.columns = pd.MultiIndex.from_tuples(df.columns, names=["task", "metric"])
    return df


def test_compare_to_baseline_marks_by_direction_after_holm():
    rng = np.random.default_rng(3)
    data = {}
    for s in range(5):
        data[("stl", s)] = {("a", "acc"): 0.70 + 0.002 * rng.standard_normal(), ("a", "err"): 0.30 + 0.002 * rng.standard_normal()}
        # better acc (up), worse err (up), both far beyond the noise
        data[("hs", s)] = {("a", "acc"): 0.80 + 0.002 * rng.standard_normal(), ("a", "err"): 0.40 + 0.002 * rng.standard_normal()}
        data[("noisy", s)] = {("a", "acc"): 0.70 + 0.05 * rng.standard_normal(), ("a", "err"): 0.30 + 0.05 * rng.standard_normal()}
    v = _values(data)
    hib = {"a": {"acc": True, "err": False}}
    df = compare_to_baseline(v, "stl", hib, "welch", 0.05).set_index(["method", "metric"])
    raw = {(m, mt): st.ttest_ind(v.loc[m][("a", mt)], v.loc["stl"][("a", mt)], equal_var=False).pvalue
           for m in ("hs", "noisy") for mt in ("acc", "err")}
    keys = list(raw)
    expected = dict(zip(keys, multipletests([raw[k] for k in keys], method="holm")[1]))
    for k in keys:
        assert df.loc[k, "p"] == pytest.approx(raw[k])
        assert df.loc[k, "p_holm"] == pytest.approx(expected[k])
    assert df.loc[("hs", "acc"), "mark"] == "better"
    assert df.loc[("hs", "err"), "mark"] == "worse"  # err went up: lower is better
    assert df.loc[("noisy", "acc"), "mark"] == ""


# ----------------------------------------------------------------- across datasets
def test_cross_dataset_friedman_posthoc_and_ranks():
    scores = pd.DataFrame({"stl": [0.0, 0.0, 0.0, 0.0], "hs": [1.0, 2.0, -0.5, 3.0], "mtan": [2.0, 2.5, 1.0, 4.0]},
                          index=["d1", "d2", "d3", "d4"])
    cd = cross_dataset(scores, higher_is_better=True, posthoc="wilcoxon")
    ref = st.friedmanchisquare(scores["stl"], scores["hs"], scores["mtan"])
    assert cd.friedman_stat == pytest.approx(ref.statistic) and cd.friedman_p == pytest.approx(ref.pvalue)
    long = scores.reset_index(drop=True).melt(var_name="method", value_name="score")
    ph = sp.posthoc_wilcoxon(long, val_col="score", group_col="method", p_adjust="holm")
    assert cd.posthoc.loc["hs", "mtan"] == pytest.approx(ph.loc["hs", "mtan"])
    assert cd.mean_ranks["mtan"] == 1.0 and cd.mean_ranks["stl"] == pytest.approx(2.75)
    assert any("only 4 dataset" in n for n in cd.notes)
    conover = cross_dataset(scores, posthoc="conover")
    assert conover.posthoc.loc["hs", "mtan"] == pytest.approx(
        sp.posthoc_conover_friedman(scores.reset_index(drop=True), p_adjust="holm").loc["hs", "mtan"])


def test_cross_dataset_with_incomplete_methods_and_too_few():
    scores = pd.DataFrame({"stl": [0.0, 0.0], "hs": [1.0, np.nan]}, index=["d1", "d2"])
    cd = cross_dataset(scores)
    assert list(cd.scores.columns) == ["stl"]
    assert any("hs" in n for n in cd.notes) and any("no test" in n for n in cd.notes)
    assert math.isnan(cd.friedman_p)


def test_split_seed_tied_to_seed_is_one_protocol():
    """School / Landmine resample the split with every seed (split_seed=${seed}): one protocol."""
    from mtlbench.results.protocol import protocol_of

    def proto(dataset, seed, split_seed):
        cfg = {"seed": seed, "dataset": {"name": dataset, "split_seed": split_seed}, "trainer": {"epochs": 3}}
        return protocol_of({"seed": seed}, cfg)

    assert proto("landmine", 0, 0) == proto("landmine", 2, 2)
    assert proto("landmine", 2, 2)["split seed"] == "= seed"
    assert proto("scenes", 1, 0)["split seed"] == 0 and proto("scenes", 0, 0)["split seed"] == 0
    assert proto("landmine", 1, 0) != proto("landmine", 2, 2)  # an explicitly fixed split differs
