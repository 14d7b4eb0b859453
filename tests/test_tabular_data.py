"""Tabular loaders (issue 9, item 3): school, landmine, census_income, yeast.

Each loader is tested on a tiny fixture the test writes in the real format (MATLAB cell
arrays via scipy.io.savemat; a gzip CSV with 42 columns) and on the real copies in
``../shared/data`` (or ``$MTLBENCH_SHARED_DATA``), skipped when those are absent."""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from mtlbench.core.data import DataError
from mtlbench.core.registry import DATASETS
from mtlbench.results.store import iter_runs

SHARED = Path(os.environ.get("MTLBENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def real(rel):
    p = SHARED / rel
    if not p.is_file():
        pytest.skip(f"real data not present at {p}")
    return p.parent


def cell(arrays):
    c = np.empty((1, len(arrays)), dtype=object)
    for k, a in enumerate(arrays):
        c[0, k] = a
    return c


@pytest.fixture
def school_root(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [20, 12, 40]
    xs = [rng.integers(0, 30, (n, 28)).astype(np.uint8) for n in sizes]
    ys = [np.clip(x[:, :1].astype(int) + rng.integers(1, 20, (len(x), 1)), 1, 70).astype(np.uint8) for x in xs]
    (tmp_path / "school").mkdir()
    scipy.io.savemat(tmp_path / "school" / "school.mat", {"X": cell(xs), "Y": cell(ys)})
    return tmp_path, xs, ys


@pytest.fixture
def landmine_root(tmp_path):
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(n, 9)) for n in (40, 60)]
    labels = [(rng.random((len(f), 1)) < 0.2).astype(np.uint8) for f in feats]
    scipy.io.savemat(tmp_path / "LandmineData.mat", {"feature": cell(feats), "label": cell(labels)})
    return tmp_path, feats, labels


def build(name, root, **kw):
    return DATASETS.get(name)(root=str(root), **kw)


def rows_per_task(split, name):
    return int(split.masks[name].sum())


def test_school_fixture_per_task_split_masks_and_scales(school_root):
    root, xs, ys = school_root
    d = build("school", root, split_seed=3)
    assert d.task_names == ["s001", "s002", "s003"] and d.input_shape == (28,)
    assert sum(d.sizes().values()) == 72
    for k, t in enumerate(d.task_names):  # 75/25 per task; val carved from the train part
        n = len(xs[k])
        n_test = rows_per_task(d.splits["test"], t)
        assert n_test == n - round(0.75 * n)
        assert rows_per_task(d.splits["val"], t) + rows_per_task(d.splits["train"], t) == n - n_test
    for s in d.splits.values():  # one sample, one task
        assert torch.stack([s.masks[t] for t in d.task_names]).sum(0).eq(1).all()
    # features standardised with train statistics only
    tr = d.splits["train"].x
    assert tr.mean(0).abs().max() < 1e-4 and d.splits["test"].x.mean(0).abs().max() > 1e-3
    # metrics on the original score scale: predicting the per-school train mean gives its RMSE
    t0 = d.tasks[0]
    te = d.splits["test"]
    m = te.masks["s001"]
    raw = te.targets["s001"][m] * t0.y_std + t0.y_mean
    assert raw.min() >= 1 and raw.max() <= 70
    rmse = [mt for mt in t0.metrics() if mt.name == "rmse"][0]
    rmse.update(torch.zeros(len(te)), te.targets["s001"], m)
    assert rmse.compute() == pytest.approx(float(((raw - t0.y_mean) ** 2).mean().sqrt()), rel=1e-5)
    # seeded: same seed same split, another seed another split
    again, other = build("school", root, split_seed=3), build("school", root, split_seed=4)
    assert torch.equal(again.splits["test"].x, d.splits["test"].x)
    assert not torch.equal(other.splits["test"].x, d.splits["test"].x)


def test_school_task_subsets_drop_other_tasks_samples(school_root):
    root, xs, _ = school_root
    d = build("school", root, tasks=["s003", "s001"])
    assert d.task_names == ["s003", "s001"] and sum(d.sizes().values()) == len(xs[2]) + len(xs[0])
    assert build("school", root, max_tasks=2).task_names == ["s001", "s002"]
    with pytest.raises(DataError, match="no task"):
        build("school", root, tasks=["s999"])


def test_landmine_fixture_stratified_split(landmine_root):
    root, feats, labels = landmine_root
    d = build("landmine", root, split_seed=0)
    assert d.task_names == ["f01", "f02"] and d.input_shape == (9,)
    for k, t in enumerate(d.task_names):
        pos = int(labels[k].sum())
        got = [int(s.targets[t][s.masks[t]].sum()) for s in d.splits.values()]
        assert sum(got) == pos and got[2] == pos - round(0.75 * pos)  # positives split per task too
        assert set(torch.unique(d.splits["train"].targets[t]).tolist()) <= {0.0, 1.0}
    assert {m.name for m in d.tasks[0].metrics()} == {"auc", "accuracy"}


def _census_row(rng, k):
    row = [str(rng.integers(18, 90)), rng.choice(["Private", "Self-employed"]), str(rng.integers(0, 50)),
           str(rng.integers(0, 40)), rng.choice(["Bachelors degree(BA AB BS)", "High school graduate"]), "0",
           "Not in universe", ["Never married", "Divorced", "Married-civilian spouse present"][k % 3]]
    row += [f"v{rng.integers(0, 3)}"] * 8 + [str(rng.integers(0, 5000)), "0", "0"] + [f"w{rng.integers(0, 2)}"] * 5
    row += ["1032.38"] + [f"m{rng.integers(0, 2)}"] * 5 + [str(rng.integers(0, 6))] + ["c"] * 5
    row += [str(rng.integers(0, 3)), "Not in universe", "2", str(rng.integers(0, 53)), "95",
            "50000+." if k % 4 == 0 else "- 50000."]
    assert len(row) == 42
    return ", ".join(row)


def test_census_income_fixture(tmp_path):
    rng = np.random.default_rng(0)
    lines = [_census_row(rng, k) for k in range(60)]
    (tmp_path / "census_income").mkdir()
    with gzip.open(tmp_path / "census_income" / "census-income.test.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    d = build("census_income", tmp_path, split_seed=0)
    assert d.task_names == ["income", "never_married"] and d.sizes() == {"train": 36, "val": 12, "test": 12}
    allsplits = [d.splits[s] for s in ("train", "val", "test")]
    assert sum(int(s.targets["income"].sum()) for s in allsplits) == 15          # every 4th row
    assert sum(int(s.targets["never_married"].sum()) for s in allsplits) == 20   # every 3rd row
    assert d.splits["train"].masks is None and d.input_shape[0] > 20            # one-hot features
    assert build("census_income", tmp_path, tasks=["never_married"]).task_names == ["never_married"]
    bad = tmp_path / "bad"
    bad.mkdir()
    with gzip.open(bad / "census-income.test.gz", "wt") as f:
        f.write("1, 2, 3\n")
    with pytest.raises(DataError, match="42"):
        build("census_income", bad)


def test_yeast_embedded():
    d = DATASETS.get("yeast")(root=None, split_seed=0)
    assert len(d.tasks) == 14 and d.input_shape == (103,) and sum(d.sizes().values()) == 2417
    y = torch.stack([d.splits["train"].targets[t] for t in d.task_names], 1)
    assert set(torch.unique(y).tolist()) == {0.0, 1.0}
    assert DATASETS.get("yeast")(root=None, split_seed=0, max_tasks=3).task_names == ["Class1", "Class2", "Class3"]


def test_missing_files_are_one_line_errors(tmp_path, run_cli, results_dir, capsys):
    for name, fname in (("school", "school.mat"), ("landmine", "LandmineData.mat"),
                        ("census_income", "census-income.test.gz")):
        with pytest.raises(DataError, match=fname):
            build(name, tmp_path)
    assert run_cli("dataset=school", f"dataset.root={tmp_path}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "school.mat not found" in err[0] and "dataset.root" in err[0]


def test_split_seed_follows_the_run_seed():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    for ds in ("school", "landmine", "census_income", "yeast"):
        with initialize_config_module("mtlbench.conf", version_base=None):
            c = OmegaConf.to_container(compose("config", overrides=[f"dataset={ds}", "seed=7"]), resolve=True)
        assert c["dataset"]["split_seed"] == 7 and c["backbone"]["name"] == "resmlp"


def test_run_on_school_fixture_records_masked_metrics(school_root, run_cli, results_dir):
    root, _, _ = school_root
    assert run_cli("dataset=school", f"dataset.root={root}", "method=stl", "backbone.width=8") == 0
    (_, rec), = list(iter_runs(results_dir))
    assert rec["tasks"] == ["s001", "s002", "s003"]
    assert set(rec["metrics"]["test"]["s001"]) == {"rmse", "explained_variance"}
    assert rec["higher_is_better"]["s001"] == {"rmse": False, "explained_variance": True}


# ----------------------------------------------------------------------------- real copies
def test_real_school():
    d = build("school", real("school/school.mat"), split_seed=0)
    assert len(d.tasks) == 139 and d.input_shape == (28,) and sum(d.sizes().values()) == 15362
    for t in d.tasks[:10]:
        s = d.splits["train"]
        raw = s.targets[t.name][s.masks[t.name]] * t.y_std + t.y_mean
        assert raw.min() >= 1 - 1e-3 and raw.max() <= 70 + 1e-3


def test_real_landmine():
    d = build("landmine", real("landmine/LandmineData.mat"), split_seed=0)
    assert len(d.tasks) == 29 and d.input_shape == (9,) and sum(d.sizes().values()) == 14820
    pos = sum(int(s.targets[t][s.masks[t]].sum()) for s in d.splits.values() for t in d.task_names)
    assert pos == 904
    assert all(rows_per_task(d.splits["test"], t) > 0 and int(d.splits["test"].targets[t].sum()) > 0
               for t in d.task_names)  # stratified: every field keeps positives in test


def test_real_census_income():
    d = build("census_income", real("census_income/census-income.test.gz"), split_seed=0)
    assert sum(d.sizes().values()) == 99762 and d.task_names == ["income", "never_married"]
    tot = {t: sum(int(s.targets[t].sum()) for s in d.splits.values()) for t in d.task_names}
    assert tot == {"income": 6186, "never_married": 43143}
    assert d.sizes()["train"] == round(0.6 * 99762)


def test_real_school_short_run(run_cli, results_dir):
    root = real("school/school.mat")
    assert run_cli("dataset=school", f"dataset.root={root}", "dataset.max_tasks=10", "arch=mtan") == 0
    (_, rec), = list(iter_runs(results_dir))
    assert len(rec["tasks"]) == 10 and rec["backbone"] == "resmlp"


def test_a_task_keeps_its_split_whatever_tasks_come_with_it():
    from mtlbench.loaders.tabular import per_task_split

    rows_a, rows_b = np.arange(0, 40), np.arange(40, 70)
    alone = per_task_split([rows_b - 40], 0.6, 0.2, seed=3, task_ids=[1])
    pair = per_task_split([rows_a, rows_b], 0.6, 0.2, seed=3, task_ids=[0, 1])
    for s in ("train", "val", "test"):
        in_pair = np.sort(pair[s][pair[s] >= 40]) - 40
        assert np.array_equal(np.sort(alone[s]), in_pair)
