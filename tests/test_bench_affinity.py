"""``python -m mtlbench bench affinity``: TAG affinity vs trained pair networks (issue 9,
item 4) on yeast (embedded), at a seconds-long budget; landmine is a documented command."""
import re

import numpy as np
import pytest

import mtlbench.cli
from mtlbench.bench.affinity import compare, run_bench
from mtlbench.results.store import iter_runs

TINY = {"profile": "tiny", "dataset.limit": "200"}


def test_compare_scores_agreement_and_disagreement():
    b = np.array([[0, 0.3, -0.1, 0.2], [0.1, 0, 0.4, -0.2], [-0.3, 0.2, 0, 0.1], [0.05, -0.1, 0.2, 0]])
    same = compare(b, b * 2)   # a monotone transform: rank-identical, same signs, same best partner
    assert same["spearman"] == pytest.approx(1.0) and same["pearson"] == pytest.approx(1.0)
    assert same["sign_agreement"] == 1.0 and same["top1_hit"] == 1.0 and same["top_k_hit"] == 1.0
    assert same["n_pairs"] == 12 and same["chance"] == pytest.approx(2 / 3)
    flip = compare(b, -b)      # TAG's best partner is the trained worst one
    assert flip["spearman"] == pytest.approx(-1.0) and flip["sign_agreement"] == 0.0
    assert flip["top1_hit"] == 0.0 and flip["top_k_hit"] == 0.0
    assert [r["best_tag"] for r in flip["per_task"]] == [2, 3, 0, 1]


def test_bench_affinity_on_yeast_prints_fields_and_reuses_candidates(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["bench", "affinity", "--dataset", "yeast", "--tasks", "3", "--epochs", "1",
            "--results-dir", str(out), "--quiet", *[f"{k}={v}" for k, v in TINY.items()]]
    assert mtlbench.cli.main(args) == 0
    text = capsys.readouterr().out
    for field in ("spearman", "pearson", "sign agreement", "top-2 hit", "wall time, trained pairs",
                  "wall time, TAG", "wall time ratio pairs / TAG"):
        assert re.search(rf"^ *{re.escape(field)}.*\d", text, re.M), field
    assert "grouping under budget 1.5" in text
    for way in ("trained", "tag", "singles"):
        assert re.search(rf"^  {way} +cost +[\d.]+ +val loss total \d", text, re.M), way
    assert "candidates: 6 trained, 0 cached" in text
    for task in ("Class1", "Class2", "Class3"):
        assert re.search(rf"^{task} +Class\d +Class\d,Class\d +(yes|no)", text, re.M)
    runs = list(iter_runs(out))
    assert len(runs) == 6 and {rec["role"] for _, rec in runs} == {"candidate"}  # 3 singles + 3 pairs, cached
    # the second call finds every candidate in the store and returns the same ground truth
    r = run_bench("yeast", 3, [0], 1, results_dir=str(out), extra=TINY)
    assert r["candidates"] == {"trained": 0, "reused": 6}
    assert len(list(iter_runs(out))) == 6
    assert r["benefit"].shape == r["affinity"].shape == (3, 3)
    off = ~np.eye(3, dtype=bool)
    assert np.isfinite(r["benefit"][off]).all() and np.isfinite(r["affinity"][off]).all()
    want = (r["single"][:, None] - r["pair"]) / r["single"][:, None]
    assert np.allclose(r["benefit"][off], want[off])
    assert -1 <= r["spearman"] <= 1 and 0 <= r["sign_agreement"] <= 1 and r["n_pairs"] == 6
    assert r["time_s"]["tag"] > 0 and r["time_s"]["ratio"] == pytest.approx(r["time_s"]["pairs_total"] / r["time_s"]["tag"])
    assert {"trained", "tag", "singles"} <= set(r["grouping"])
    assert r["grouping"]["singles"]["val_loss_total"] == pytest.approx(float(r["single"].sum()))
    for way in ("trained", "tag"):
        assert r["grouping"][way]["cost"] <= 1.5
    # 3 tasks: both ways choose among every subset, so the trained-pair choice is optimal for its own score
    assert r["grouping"]["trained"]["val_loss_total"] <= r["grouping"]["tag"]["val_loss_total"] + 1e-9


def test_bench_affinity_bad_input_is_one_line(tmp_path, capsys):
    assert mtlbench.cli.main(["bench", "affinity", "--dataset", "yeast", "--tasks", "2",
                              "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--tasks must be >= 3" in err
    assert mtlbench.cli.main(["bench", "affinity", "--dataset", "yeast", "--tasks", "30",
                              "--results-dir", str(tmp_path), "--quiet", *[f"{k}={v}" for k, v in TINY.items()]]) == 2
    assert "set --tasks <= 14" in capsys.readouterr().err
