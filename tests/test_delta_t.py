import math

import numpy as np
import pandas as pd
import pytest

from mtlbench.results.stats import delta_t, summarize
from mtlbench.results.store import RUN_COLUMNS


# ----------------------------------------------------------------- delta_t
def test_single_task_higher_is_better():
    d, notes = delta_t({"a": {"acc": 0.9}}, {"a": {"acc": 0.8}}, {"a": {"acc": True}})
    assert d == pytest.approx(12.5)  # (0.9 - 0.8) / 0.8 * 100
    assert notes == []


def test_worse_is_negative():
    d, _ = delta_t({"a": {"acc": 0.7}}, {"a": {"acc": 0.8}}, {"a": {"acc": True}})
    assert d == pytest.approx(-12.5)


def test_lower_is_better():
    d, notes = delta_t({"a": {"err": 0.2}}, {"a": {"err": 0.25}}, {"a": {"err": False}})
    assert d == pytest.approx(20.0)  # -(0.2 - 0.25) / 0.25 * 100
    assert notes == []


def test_mixed_directions_averaged_per_task_then_over_tasks():
    method = {"seg": {"miou": 0.55, "pix_err": 0.30}, "depth": {"abs_err": 0.45}}
    base = {"seg": {"miou": 0.50, "pix_err": 0.40}, "depth": {"abs_err": 0.50}}
    hib = {"seg": {"miou": True, "pix_err": False}, "depth": {"abs_err": False}}
    # seg:   miou    +(0.55 - 0.50) / 0.50 * 100 = +10
    #        pix_err -(0.30 - 0.40) / 0.40 * 100 = +25   -> task mean (10 + 25) / 2 = 17.5
    # depth: abs_err -(0.45 - 0.50) / 0.50 * 100 = +10   -> task mean 10
    # Δ_T = (17.5 + 10) / 2 = 13.75   (not the metric mean (10 + 25 + 10) / 3 = 15)
    d, notes = delta_t(method, base, hib)
    assert d == pytest.approx(13.75)
    assert notes == []


def test_baseline_not_positive_is_left_out_with_a_note():
    method = {"a": {"acc": 0.6, "miou": 0.2}, "b": {"acc": 0.5}}
    base = {"a": {"acc": 0.5, "miou": 0.0}, "b": {"acc": 0.5}}
    hib = {"a": {"acc": True, "miou": True}, "b": {"acc": True}}
    # a: only acc counts: +20; b: 0 -> Δ_T = 10
    d, notes = delta_t(method, base, hib)
    assert d == pytest.approx(10.0)
    assert len(notes) == 1 and "a/miou" in notes[0] and "left out" in notes[0]


def test_negative_baseline_is_left_out():
    d, notes = delta_t({"a": {"x": 1.0}, "b": {"y": 1.1}}, {"a": {"x": -1.0}, "b": {"y": 1.0}},
                       {"a": {"x": True}, "b": {"y": True}})
    # task a has no usable metric: out of the task mean; b: +10
    assert d == pytest.approx(10.0)
    assert any("a/x" in n for n in notes)
    assert any("task 'a'" in n for n in notes)


def test_all_metrics_left_out_gives_nan():
    d, notes = delta_t({"a": {"acc": 0.3}}, {"a": {"acc": 0.0}}, {"a": {"acc": True}})
    assert math.isnan(d)
    assert notes


def test_task_missing_from_method_is_noted():
    d, notes = delta_t({"a": {"acc": 0.9}}, {"a": {"acc": 0.8}, "b": {"acc": 0.5}},
                       {"a": {"acc": True}, "b": {"acc": True}})
    assert d == pytest.approx(12.5)
    assert any("'b'" in n for n in notes)


def test_non_finite_method_value_is_left_out():
    d, notes = delta_t({"a": {"acc": float("nan")}, "b": {"acc": 0.6}},
                       {"a": {"acc": 0.5}, "b": {"acc": 0.5}}, {"a": {"acc": True}, "b": {"acc": True}})
    assert d == pytest.approx(20.0)
    assert any("a/acc" in n for n in notes)


def test_baseline_itself_is_zero():
    s = {"a": {"acc": 0.3, "err": 0.7}, "b": {"acc": 0.9}}
    hib = {"a": {"acc": True, "err": False}, "b": {"acc": True}}
    assert delta_t(s, s, hib)[0] == 0.0


# ----------------------------------------------------------------- summarize
HIB = {"acc": True, "err": False}


def _runs_frame(values):
    """values: {(method, seed): {task: {metric: value}}} -> a load_runs()-shaped frame."""
    rows = []
    params = {"stl": 2000, "hard_sharing": 1200}
    for (method, seed), by_task in values.items():
        base = dict.fromkeys(RUN_COLUMNS)
        base.update(run_id=f"s{seed}-{method[:8]:0<8}", dataset="toy", method=method, seed=seed,
                    status="completed", params_total=params[method], path=f"/x/{method}/{seed}")
        for split in ("test", "val"):
            for task, by_metric in by_task.items():
                for metric, v in by_metric.items():
                    # val values are deliberately different: summarize(split="test") must ignore them
                    rows.append({**base, "split": split, "task": task, "metric": metric,
                                 "value": v if split == "test" else v / 2, "higher_is_better": HIB[metric]})
    df = pd.DataFrame(rows)
    assert list(df.columns) == RUN_COLUMNS + ["split", "task", "metric", "value", "higher_is_better"]
    return df


VALUES = {
    ("stl", 0): {"left": {"acc": 0.80}, "right": {"err": 0.30}},
    ("stl", 1): {"left": {"acc": 0.70}, "right": {"err": 0.20}},
    ("stl", 2): {"left": {"acc": 0.90}, "right": {"err": 0.25}},
    ("hard_sharing", 0): {"left": {"acc": 0.85}, "right": {"err": 0.20}},
    ("hard_sharing", 1): {"left": {"acc": 0.95}, "right": {"err": 0.24}},
}


def test_summarize_mean_std_delta_t():
    summary, notes = summarize(_runs_frame(VALUES), baseline="stl")
    assert list(summary["method"]) == ["stl", "hard_sharing"]  # baseline first
    s = summary.set_index("method")

    stl_left = np.array([0.80, 0.70, 0.90])
    stl_right = np.array([0.30, 0.20, 0.25])
    hs_left = np.array([0.85, 0.95])
    hs_right = np.array([0.20, 0.24])

    assert s.loc["stl", "n_seeds"] == 3 and s.loc["hard_sharing", "n_seeds"] == 2
    assert s.loc["stl", "params"] == 2000 and s.loc["hard_sharing", "params"] == 1200
    assert s.loc["stl", "left/acc_mean"] == pytest.approx(stl_left.mean())
    assert s.loc["stl", "left/acc_std"] == pytest.approx(stl_left.std(ddof=1))  # 0.1
    assert s.loc["stl", "right/err_std"] == pytest.approx(stl_right.std(ddof=1))  # 0.05
    assert s.loc["hard_sharing", "left/acc_mean"] == pytest.approx(0.90)
    assert s.loc["hard_sharing", "left/acc_std"] == pytest.approx(hs_left.std(ddof=1))
    assert s.loc["hard_sharing", "right/err_mean"] == pytest.approx(0.22)

    # Δ_T against the baseline's seed mean: left +(0.90-0.80)/0.80*100 = +12.5,
    # right -(0.22-0.25)/0.25*100 = +12 -> (12.5 + 12) / 2 = 12.25
    expected = ((hs_left.mean() - stl_left.mean()) / stl_left.mean() * 100
                - (hs_right.mean() - stl_right.mean()) / stl_right.mean() * 100) / 2
    assert expected == pytest.approx(12.25)
    assert s.loc["hard_sharing", "delta_t"] == pytest.approx(expected)
    assert s.loc["stl", "delta_t"] == pytest.approx(0.0)
    assert notes == []


def test_summarize_val_split():
    s = summarize(_runs_frame(VALUES), baseline="stl", split="val")[0].set_index("method")
    assert s.loc["stl", "left/acc_mean"] == pytest.approx(0.40)
    assert s.loc["hard_sharing", "right/err_mean"] == pytest.approx(0.11)


def test_summarize_without_baseline_has_nan_delta_and_a_note():
    only_hs = {k: v for k, v in VALUES.items() if k[0] == "hard_sharing"}
    summary, notes = summarize(_runs_frame(only_hs), baseline="stl")
    assert summary["delta_t"].isna().all()
    assert any("'stl'" in n for n in notes)


def test_summarize_single_seed_std_is_nan():
    one = {("stl", 0): VALUES[("stl", 0)]}
    s = summarize(_runs_frame(one))[0].set_index("method")
    assert s.loc["stl", "n_seeds"] == 1
    assert math.isnan(s.loc["stl", "left/acc_std"])


def test_missing_baseline_value_is_left_out_with_a_note():
    d, notes = delta_t({"a": {"acc": 0.9}, "b": {"acc": 0.6}}, {"a": {"acc": None}, "b": {"acc": 0.5}},
                       {"a": {"acc": True}, "b": {"acc": True}})
    assert d == pytest.approx(20.0)
    assert any("a/acc" in n for n in notes)
