"""Every registered (arch, balancer) pair, every method preset and every dataset runs end
to end (profile=tiny). A new method or dataset is covered with no new test code."""
import pytest

import mtlbench.cli
from mtlbench.core.registry import ARCHS, BALANCERS, DATASETS, load_all
from mtlbench.results.store import iter_runs

load_all()
PAIRS = [(a, b) for a in ARCHS.names() for b in BALANCERS.names()]
PRESETS = mtlbench.cli.config_options("method")
DATASET_NAMES = DATASETS.names()


def test_matrix_is_not_empty():
    assert ("hard_sharing", "equal") in PAIRS and ("independent", "static") in PAIRS
    assert {"stl", "hard_sharing"} <= set(PRESETS)
    assert "multimnist" in DATASET_NAMES


def completed(results_dir):
    # task-grouping methods also store their candidate networks (role: candidate) as runs
    runs = [(f, r) for f, r in iter_runs(results_dir) if (r.get("role") or "main") == "main"]
    assert len(runs) == 1
    folder, rec = runs[0]
    assert rec["status"] == "completed"
    assert (folder / "run.json").is_file()
    assert set(rec["metrics"]) == {"test", "val"}
    assert rec["params"]["total"] > 0 and rec["flops"]["total"] > 0
    return folder, rec


# the two embedded datasets: a classification one and a dense one (small sizes keep the
# generated scene cache small)
PAIR_DATASETS = {
    "multimnist": [],
    "scenes": ["dataset=scenes", "dataset.n_train=32", "dataset.n_val=16", "dataset.n_test=16"],
    # tabular: the residual MLP backbone on 5 of Yeast's 14 binary tasks (embedded)
    "yeast": ["dataset=yeast", "dataset.max_tasks=5", "backbone.width=16"],
}
CASES = [(a, b, d) for d in PAIR_DATASETS for a, b in PAIRS]


@pytest.mark.parametrize("arch,balancer,dataset", CASES, ids=[f"{d}-{a}+{b}" for a, b, d in CASES])
def test_arch_balancer_pair(arch, balancer, dataset, run_cli, results_dir):
    assert run_cli(f"arch={arch}", f"balancer={balancer}", *PAIR_DATASETS[dataset]) == 0
    folder, rec = completed(results_dir)
    assert (rec["arch"], rec["balancer"], rec["dataset"]) == (arch, balancer, dataset)
    assert rec["tasks"] and set(rec["metrics"]["test"]) == set(rec["tasks"])


@pytest.mark.parametrize("preset", PRESETS)
def test_method_preset(preset, run_cli, results_dir):
    assert run_cli(f"method={preset}") == 0
    folder, rec = completed(results_dir)
    assert rec["method"] == preset and folder.parent.name == preset


@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_dataset(dataset, run_cli, results_dir):
    code = run_cli(f"dataset={dataset}", *PAIR_DATASETS.get(dataset, [])[1:])
    if code != 0:
        # a dataset read from files the user supplies (dataset.root) is skipped when they are
        # absent: the run then fails with a DataError, recorded in its run.json
        reasons = [rec.get("reason", "") for _, rec in iter_runs(results_dir)]
        if reasons and reasons[0].startswith("DataError:"):
            pytest.skip(f"{dataset}: no data ({reasons[0][:160]})")
    assert code == 0
    folder, rec = completed(results_dir)
    assert rec["dataset"] == dataset and folder.parents[1].name == dataset
    assert all(0 < n <= 64 for n in rec["data_sizes"].values())  # profile=tiny's dataset.limit
