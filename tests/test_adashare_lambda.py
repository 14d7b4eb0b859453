"""AdaShare's policy regularisers, end to end through the CLI (profile=tiny sizes): a large
λ_sparsity skips more blocks than none; a large λ_sharing makes the tasks' policies agree
on more blocks than none. Every block is under the policy (curriculum off) and the logits
start random (std 1) so that the tasks' policies start apart."""
import math

import pytest

from mtlbench.results.store import iter_runs

BASE = ["method=adashare", "dataset=scenes", "dataset.n_train=48", "dataset.n_val=16", "dataset.n_test=16",
        "dataset.size=[32,32]", "backbone.width=8", "backbone.layers=[2,2,2,2]", "arch.init=random",
        "arch.init_std=1.0", "procedure.search=10", "procedure.curriculum=false", "procedure.policy_lr=0.05",
        "trainer.max_steps_per_epoch=4",
        "procedure.policy_weight_decay=0.0"]
SETTINGS = {"none": (0.0, 0.0), "sparse": (50.0, 0.0), "share": (0.0, 50.0)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_run_cli):
    out = {}
    for name, (sparsity, sharing) in SETTINGS.items():
        results = tmp_path_factory.mktemp(name) / "results"
        assert make_run_cli(results)(*BASE, f"procedure.sparsity_weight={sparsity}",
                                     f"procedure.sharing_weight={sharing}") == 0
        (_, rec), = list(iter_runs(results))
        out[name] = rec["procedure_info"]["policy"]
    return out


def _log_odds(p):
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def test_large_sparsity_skips_more_blocks(runs):
    skipped = {k: sum(1 - e for row in v["execute"] for e in row) for k, v in runs.items()}
    p_skip = {k: sum(1 - p for row in v["execute_prob"] for p in row) for k, v in runs.items()}
    assert skipped["sparse"] > skipped["none"]
    assert p_skip["sparse"] > p_skip["none"]


def test_large_sharing_agrees_on_more_blocks(runs):
    def agree(policy):
        return sum(len(set(col)) == 1 for col in zip(*policy["execute"]))

    def spread(policy):
        z = [[_log_odds(p) for p in row] for row in policy["execute_prob"]]
        T = len(z)
        return sum(abs(z[i][l] - z[j][l]) for i in range(T) for j in range(i + 1, T) for l in range(len(z[0])))

    assert agree(runs["share"]) > agree(runs["none"])
    assert spread(runs["share"]) < spread(runs["none"])
